//! The Hopper kernels (kernels/gemm_wgmma.cu) called directly through `gemm_bf16_wgmma` (not
//! through `IMPLICIT_GEMM`), against gemm_support.rs's f64 reference: every tile edge (M, N, K
//! tails, K shorter than one stage, more tiles than blocks, batches), every layout, both
//! outputs, accumulation, every forced tile and epilogue, run-to-run bit equality, agreement
//! with kernels/gemm.cu, and refusals of what TMA cannot read. They skip without a GPU and on
//! devices other than compute capability 9.0, and fail on a 9.0 device where the wgmma path is
//! unavailable.

use super::gemm_support::{gemm_case, refusal, run, Case, Engine, LAYOUTS};
use crate::common::gpu::{hopper_gpu, poisoned, rel_err, Rng};
use half::bf16;
use implicit::backend::cuda::{GemmLayout, WgmmaConfig, WgmmaEpilogue, WgmmaTile};

/// What the wgmma tests (here and in gemm_dispatch.rs) name when they skip off compute
/// capability 9.0 (`hopper_gpu`).
pub(crate) const WGMMA: &str = "wgmma";

/// (m, n, k, batch) for the wgmma kernels (128 × 256 tiles, k steps of 64, 4 stages) in every
/// layout: all dimensions multiples of 8, as TMA needs for any layout.
const WGMMA_SHAPES: &[(usize, usize, usize, usize)] = &[
    (8, 8, 8, 1),        // one tile, almost all of it past the edges; k < one stage
    (128, 256, 64, 1),   // exactly one tile and one k step
    (136, 264, 72, 1),   // 8 past the tile in m, n and k: 2 × 2 tiles, a k tail
    (200, 104, 40, 3),   // batch 3, k < one stage, two of four 64-wide n boxes
    (64, 320, 4104, 1),  // 65 k steps: the 4-stage ring wraps 16 times, k tail of 8
    (520, 1032, 576, 1), // 9 k steps (not a multiple of the stages), 5 × 5 tiles
    (1000, 776, 328, 2), // tails everywhere, batch 2
    (2184, 1024, 64, 4), // 18 tile rows (a partial group of 16), 288 tiles: > 2 per block
];

/// Shapes the wgmma kernels take in one layout only (odd dimensions TMA can still read).
const WGMMA_LAYOUT_SHAPES: &[(GemmLayout, usize, usize, usize, usize)] = &[
    (GemmLayout::NT, 7, 13, 24, 1), // odd m and n: scalar epilogue stores
    (GemmLayout::NT, 129, 257, 72, 1),
    (GemmLayout::NT, 33, 17, 8, 3),
    (GemmLayout::NT, 1, 300, 64, 1),
    (GemmLayout::NT, 300, 520, 264, 1),
    (GemmLayout::NN, 129, 264, 72, 1), // odd m
    (GemmLayout::NN, 33, 16, 8, 3),
    (GemmLayout::NN, 300, 520, 264, 1),
    (GemmLayout::TN, 136, 200, 30, 1), // k not a multiple of 8 (TMA's outer dimension)
    (GemmLayout::TN, 128, 256, 5, 1),
    (GemmLayout::TN, 64, 72, 1, 2),
    // n − 256 = 184 in (128, 192]: the last tile's MN-major B takes 3 of its 4 boxes.
    (GemmLayout::NN, 136, 440, 72, 1),
    (GemmLayout::TN, 136, 440, 72, 1),
];

/// Llama-2-7B's products at 512 and 2048 tokens, and attention's batched ones.
const WGMMA_MODEL_SHAPES: &[(GemmLayout, usize, usize, usize, usize)] = &[
    (GemmLayout::NT, 512, 4096, 4096, 1),  // q/k/v/o projections
    (GemmLayout::NT, 512, 11008, 4096, 1), // gate/up
    (GemmLayout::NT, 512, 4096, 11008, 1), // down
    (GemmLayout::NT, 2048, 4096, 4096, 1), // 256 tiles: about two per block
    (GemmLayout::NN, 512, 11008, 4096, 1), // dX of down
    (GemmLayout::NN, 512, 4096, 11008, 1), // dX of gate/up
    (GemmLayout::TN, 11008, 4096, 512, 1), // dW of gate/up
    (GemmLayout::TN, 4096, 11008, 512, 1), // dW of down
    (GemmLayout::NT, 512, 512, 128, 32),   // scores Q·Kᵀ per head
    (GemmLayout::NN, 512, 128, 512, 32),   // P·V per head
];

/// Every wgmma case as (layout, m, n, k, batch).
fn wgmma_cases() -> Vec<(GemmLayout, usize, usize, usize, usize)> {
    let mut cases: Vec<_> = LAYOUTS
        .iter()
        .flat_map(|&l| {
            WGMMA_SHAPES
                .iter()
                .map(move |&(m, n, k, b)| (l, m, n, k, b))
        })
        .collect();
    cases.extend_from_slice(WGMMA_LAYOUT_SHAPES);
    cases
}

#[test]
fn wgmma_shapes_are_ones_tma_can_read() {
    for (layout, m, n, k, batch) in wgmma_cases()
        .into_iter()
        .chain(WGMMA_MODEL_SHAPES.iter().copied())
    {
        assert!(
            layout.vectorized(m, n, k) && k > 0 && batch > 0,
            "{layout:?} {m}x{n}x{k}: not a shape the wgmma kernels take"
        );
    }
}

#[test]
fn wgmma_gemm_matches_f64_on_tile_edges() {
    let Some(gpu) = hopper_gpu(WGMMA) else { return };
    let mut rng = Rng::new("wgmma_tile_edges");
    for (layout, m, n, k, batch) in wgmma_cases() {
        gemm_case(
            gpu,
            &mut rng,
            Case::new(layout, m, n, k, batch),
            &[Engine::Wgmma],
        );
    }
}

#[test]
fn wgmma_gemm_matches_f64_on_model_shapes() {
    let Some(gpu) = hopper_gpu(WGMMA) else { return };
    let mut rng = Rng::new("wgmma_model");
    for &(layout, m, n, k, batch) in WGMMA_MODEL_SHAPES {
        gemm_case(
            gpu,
            &mut rng,
            Case::new(layout, m, n, k, batch),
            &[Engine::Wgmma],
        );
    }
}

/// Every forced (tile, epilogue) of kernels/gemm_wgmma.cu: [`gemm_bf16_wgmma`] picks one per
/// product, so each must be right everywhere, not only where it is picked.
const WGMMA_CONFIGS: [WgmmaConfig; 4] = [
    WgmmaConfig {
        tile: WgmmaTile::Wide,
        epilogue: WgmmaEpilogue::Tma,
    },
    WgmmaConfig {
        tile: WgmmaTile::Square,
        epilogue: WgmmaEpilogue::Tma,
    },
    WgmmaConfig {
        tile: WgmmaTile::Wide,
        epilogue: WgmmaEpilogue::Registers,
    },
    WgmmaConfig {
        tile: WgmmaTile::Square,
        epilogue: WgmmaEpilogue::Registers,
    },
];

fn forced_engines() -> Vec<Engine> {
    WGMMA_CONFIGS
        .iter()
        .map(|&c| Engine::WgmmaWith(c))
        .collect()
}

/// Every tile edge, layout, batch and output mode on each variant: the TMA epilogue's boxes
/// past M and N (clipped by TMA), its f32 reduce-add (accumulated twice), and its refusals
/// (bf16 C += A·B, rows of C that are not 16-byte multiples).
#[test]
fn wgmma_every_tile_and_epilogue_matches_f64_on_tile_edges() {
    let Some(gpu) = hopper_gpu(WGMMA) else { return };
    let mut rng = Rng::new("wgmma_variants_edges");
    let engines = forced_engines();
    for (layout, m, n, k, batch) in wgmma_cases() {
        gemm_case(gpu, &mut rng, Case::new(layout, m, n, k, batch), &engines);
    }
}

/// Llama-2-7B's products at T = 2048 tokens where the automatic choice differs (gate/up and
/// the dX of down take 128 × 128 tiles, the rest 128 × 256; f32 weight gradients the TMA
/// reduce-add), each on every variant.
#[test]
fn wgmma_every_tile_and_epilogue_matches_f64_at_2048_tokens() {
    let Some(gpu) = hopper_gpu(WGMMA) else { return };
    let mut rng = Rng::new("wgmma_variants_model");
    let mut engines = forced_engines();
    engines.push(Engine::Wgmma);
    for &(layout, m, n, k) in &[
        (GemmLayout::NT, 2048, 11008, 4096),
        (GemmLayout::NN, 2048, 11008, 4096),
        (GemmLayout::TN, 4096, 4096, 2048),
    ] {
        gemm_case(gpu, &mut rng, Case::new(layout, m, n, k, 1), &engines);
    }
}

/// On each tile the TMA epilogue writes exactly what the register epilogue writes (the same
/// roundings; the reduce-add is one f32 addition, as the register path's is), so any differing
/// bit is a misplaced element or a race between the staging buffers and the stores. The two
/// tiles sum each element over the same k blocks; only the order inside a wgmma may differ, so
/// they agree to within f32 rounding (the 1e-4 the wgmma-vs-mma.sync test allows, tightened to
/// 1e-5 as these are the same k steps).
#[test]
fn wgmma_epilogues_agree_bit_for_bit_and_tiles_to_rounding() {
    let Some(gpu) = hopper_gpu(WGMMA) else { return };
    let mut rng = Rng::new("wgmma_variants_bits");
    for case in [
        Case::new(GemmLayout::NT, 1040, 2056, 1032, 1),
        Case::new(GemmLayout::NN, 264, 1288, 520, 3),
        Case::new(GemmLayout::TN, 1288, 1032, 328, 1),
    ] {
        let (ga, gb) = case.random_operands(gpu, &mut rng);
        let c0: Vec<f32> = rng.vec(case.c_len(), 8.0);
        // bf16 written, f32 written, f32 accumulated into c0; all as f32.
        let outputs = |config: WgmmaConfig| -> [Vec<f32>; 3] {
            let engine = Engine::WgmmaWith(config);
            let mut c = poisoned::<bf16>(gpu, case.c_len());
            run(engine, gpu, &case, &ga, &gb, &mut c, false);
            let written_bf16 = gpu
                .download(&c)
                .unwrap()
                .iter()
                .map(|x| x.to_f32())
                .collect();
            let mut c = poisoned::<f32>(gpu, case.c_len());
            run(engine, gpu, &case, &ga, &gb, &mut c, false);
            let written_f32 = gpu.download(&c).unwrap();
            let mut c = gpu.upload(&c0).unwrap();
            run(engine, gpu, &case, &ga, &gb, &mut c, true);
            [written_bf16, written_f32, gpu.download(&c).unwrap()]
        };
        let [wide_tma, square_tma, wide_regs, square_regs] = WGMMA_CONFIGS.map(outputs);
        for (what, got, want) in [
            ("128x256", &wide_tma, &wide_regs),
            ("128x128", &square_tma, &square_regs),
        ] {
            for (mode, (g, w)) in ["bf16 out", "f32 out", "f32 +="]
                .iter()
                .zip(got.iter().zip(want))
            {
                let differ = g
                    .iter()
                    .zip(w)
                    .filter(|(x, y)| x.to_bits() != y.to_bits())
                    .count();
                assert_eq!(
                    differ, 0,
                    "{case:?} {what} {mode}: TMA vs registers, {differ} differ"
                );
            }
        }
        let wide: Vec<f64> = wide_regs[1].iter().map(|&v| v as f64).collect();
        let e = rel_err(&square_regs[1], &wide);
        eprintln!("{case:?}: 128x128 vs 128x256 rel diff {e:.2e}");
        assert!(e <= 1e-5, "{case:?}: 128x128 vs 128x256 rel diff {e:.3e}");
    }
}

/// The same inputs give the same bits twice (a race in the pipeline would not), and the same
/// products as kernels/gemm.cu to within rounding.
#[test]
fn wgmma_gemm_is_deterministic_and_agrees_with_the_mma_kernel() {
    let Some(gpu) = hopper_gpu(WGMMA) else { return };
    let mut rng = Rng::new("wgmma_deterministic");
    for &(layout, m, n, k, batch) in &[
        (GemmLayout::NT, 1040, 2056, 1032, 1),
        (GemmLayout::NN, 1032, 1288, 2056, 2),
        (GemmLayout::TN, 1288, 1032, 4104, 1),
    ] {
        let case = Case::new(layout, m, n, k, batch);
        let (ga, gb) = case.random_operands(gpu, &mut rng);
        let mut outs = Vec::new();
        for _ in 0..2 {
            let mut c = poisoned::<f32>(gpu, case.c_len());
            run(Engine::Wgmma, gpu, &case, &ga, &gb, &mut c, false);
            outs.push(gpu.download(&c).unwrap());
        }
        let differ = outs[0]
            .iter()
            .zip(&outs[1])
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        assert_eq!(
            differ, 0,
            "{case:?}: {differ} elements differ between two runs"
        );
        let mut c = poisoned::<f32>(gpu, case.c_len());
        run(Engine::Ours, gpu, &case, &ga, &gb, &mut c, false);
        let theirs: Vec<f64> = gpu
            .download(&c)
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let e = rel_err(&outs[0], &theirs);
        eprintln!("{case:?}: wgmma vs mma.sync rel diff {e:.2e}");
        assert!(e <= 1e-4, "{case:?}: wgmma vs mma.sync rel diff {e:.3e}");
    }
}

#[test]
fn wgmma_gemm_refuses_what_tma_cannot_read() {
    let Some(gpu) = hopper_gpu(WGMMA) else { return };
    let a = gpu.upload(&[bf16::ONE; 8 * 12]).unwrap();
    let b = gpu.upload(&[bf16::ONE; 12 * 8]).unwrap();
    let mut c64 = poisoned::<f32>(gpu, 8 * 8);
    let mut c144 = poisoned::<bf16>(gpu, 12 * 12);
    for (what, result) in [
        // NT reads A and B along k: rows of 12 elements are 24 bytes, not a multiple of 16.
        (
            "NT k = 12",
            gpu.gemm_bf16_wgmma(GemmLayout::NT, 8, 8, 12, 1, &a, &b, &mut c64, false),
        ),
        // TN reads A [k, m] along m: rows of 12 elements.
        (
            "TN m = 12",
            gpu.gemm_bf16_wgmma(GemmLayout::TN, 12, 12, 8, 1, &a, &b, &mut c144, false),
        ),
        (
            "A too short",
            gpu.gemm_bf16_wgmma(GemmLayout::NN, 8, 8, 16, 1, &a, &b, &mut c64, false),
        ),
    ] {
        let e = refusal(what, result);
        assert!(e.contains(" m ") && e.contains("wgmma"), "{what}: {e}");
    }
    // Refused products leave C as it was.
    assert!(gpu.download(&c64).unwrap().iter().all(|v| v.is_nan()));
}
