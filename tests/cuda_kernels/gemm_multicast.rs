//! The 2-block-cluster variants of the Hopper GEMM (kernels/gemm_wgmma.cu's `_mc` kernels: two
//! tiles one above the other share B, each block loading half of it and multicasting it to
//! both), forced through `gemm_bf16_wgmma_variant` on every layout (NT, NN, TN), both tiles and
//! both epilogues, in every output mode (bf16 out, f32 out, f32 += twice, bf16 +=):
//! - against an f64 reference on the CPU from the same bf16 inputs, C poisoned with NaN first;
//!   bounds 8e-3 (bf16 out) and 2e-3 (f32 out), those of the 1-block wgmma tests (gemm_support.rs)
//!   (which the first H100 run passed): the cluster changes where B's bytes come from, not
//!   the arithmetic;
//! - bit for bit against the 1-block kernel on the same inputs: each tile runs the same
//!   wgmma instructions over the same k order on the same shared-memory bytes, so any
//!   difference is a bug (a stage read before both halves of B landed, or overwritten early);
//! - at the edges a pair can have: one tile row (rank 1 has no tile of its own), an odd number
//!   of tile rows (the last pair row's second block idles while its peer works), a second half
//!   of B wholly past N (not loaded), N-major B with 3 of 4 boxes, batches, more pairs than
//!   clusters, k tails, and the model's 2048-token products.
//!
//! Plus: the dispatch resolves Auto to clusters at the model's shapes (and not under
//! `IMPLICIT_GEMM=wgmma-nocluster`). They skip without a GPU or off compute capability 9.0.
//! Every test name holds "wgmma", so tools/gpu_check.sh's wgmma step runs them.

// The 1-block wgmma tests' bounds (which passed on the H100), reference and row sampling.
use super::gemm_support::{
    check_out, pick_rows, reference, run, sample_rows, Case, Engine, BF16_OUT_BOUND, F32_OUT_BOUND,
    FULL_CHECK_MACS, SAMPLED_ROWS,
};
use crate::common::gpu::{bits, hopper_gpu, poisoned, Dtype, Rng};
use half::bf16;
use implicit::backend::cuda::{
    wgmma_cluster_for, wgmma_clusters_allowed, CudaBackend, DeviceBuffer, GemmChoice, GemmLayout,
    WgmmaCluster, WgmmaConfig, WgmmaEpilogue, WgmmaTile, GEMM_ENV, GEMM_NO_CLUSTER,
};

/// What a test here names when it skips off compute capability 9.0.
const WGMMA_MULTICAST: &str = "wgmma multicast";

/// The forced variants: both tiles, the automatic epilogue (TMA where C allows it, else
/// registers) and the register epilogue.
const CONFIGS: [WgmmaConfig; 4] = [
    WgmmaConfig {
        tile: WgmmaTile::Wide,
        epilogue: WgmmaEpilogue::Auto,
    },
    WgmmaConfig {
        tile: WgmmaTile::Square,
        epilogue: WgmmaEpilogue::Auto,
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

const LAYOUTS: [GemmLayout; 3] = [GemmLayout::NT, GemmLayout::NN, GemmLayout::TN];

/// (m, n, k, batch) for every layout (multiples of 8: TMA reads each layout's rows).
const SHAPES: &[(usize, usize, usize, usize)] = &[
    (8, 8, 8, 1),        // one tile row: rank 1 has no tile; B's second half past N
    (128, 256, 64, 1),   // exactly one tile (and its idle partner), one k step
    (256, 256, 64, 1),   // exactly one pair
    (264, 104, 40, 3),   // 3 tile rows (odd), batch 3, k < one stage, B half past N
    (136, 264, 72, 1),   // 2 × 2 tiles, tails in m, n and k
    (64, 320, 4104, 1),  // 65 k steps: the ring wraps many times; lone tile rows
    (520, 1032, 576, 1), // 5 tile rows, 9 k steps
    (1000, 776, 328, 2), // 8 tile rows, tails everywhere, batch 2
    (1800, 2304, 72, 2), // 15 tile rows: 144 pairs (more than the clusters), idle halves
    (2184, 1024, 64, 4), // 18 tile rows (a partial group), 144 pairs
];

/// Shapes one layout takes (odd dimensions TMA can still read in it).
const LAYOUT_SHAPES: &[(GemmLayout, usize, usize, usize, usize)] = &[
    (GemmLayout::NT, 7, 13, 24, 1), // odd m, n: one tile row, scalar stores
    (GemmLayout::NT, 129, 257, 72, 1), // 2 tile rows, odd n
    (GemmLayout::NT, 300, 520, 264, 1),
    (GemmLayout::NN, 129, 264, 72, 1),
    (GemmLayout::NN, 136, 440, 72, 1), // N-major B: 3 of 4 boxes, rank 0 loads 2, rank 1 one
    (GemmLayout::NN, 392, 440, 72, 1),
    (GemmLayout::TN, 136, 200, 30, 1), // k not a multiple of 8
    (GemmLayout::TN, 128, 256, 5, 1),
    (GemmLayout::TN, 136, 440, 72, 1),
    (GemmLayout::TN, 264, 72, 8, 2),
];

/// Llama-2-7B's products at 2048 tokens (forward, dX, dW +=), as bench kernels times them.
const MODEL_SHAPES: &[(GemmLayout, usize, usize, usize, usize)] = &[
    (GemmLayout::NT, 2048, 4096, 4096, 1),  // q/k/v/o forward
    (GemmLayout::NT, 2048, 11008, 4096, 1), // gate/up forward (the square tile)
    (GemmLayout::NN, 2048, 4096, 11008, 1), // dX of gate/up
    (GemmLayout::TN, 4096, 4096, 2048, 1),  // dW of q/k/v/o (f32 +=)
];

fn tile_columns(tile: WgmmaTile) -> usize {
    match tile {
        WgmmaTile::Square => 128,
        WgmmaTile::Wide | WgmmaTile::Auto => 256,
    }
}

/// All rows, or for products over [`FULL_CHECK_MACS`] the first, last, middle, 128th and random
/// ones (both tiles of a pair get some: they are spread over m); every element is still checked
/// to be written, and bit-compared with the 1-block kernel.
fn rows_to_check(case: &Case, rng: &mut Rng) -> Vec<usize> {
    let Case { m, n, k, batch, .. } = *case;
    if m * n * k * batch <= FULL_CHECK_MACS || m <= SAMPLED_ROWS {
        return (0..m).collect();
    }
    sample_rows(m, vec![0, m - 1, m / 2, 128.min(m - 1)], rng)
}

/// One output mode: C starts as `c0` (None: NaN), gets `times` products (accumulating when c0
/// is given) with clusters, then again from the same start without; the two must agree bit
/// for bit, every element must be finite, and the rows must match `want` within `bound`
/// (`check_out`, the 1-block tests' check).
#[allow(clippy::too_many_arguments)]
fn check_mode<O: Dtype>(
    gpu: &CudaBackend,
    what: &str,
    config: WgmmaConfig,
    case: &Case,
    (a, b): (&DeviceBuffer<bf16>, &DeviceBuffer<bf16>),
    c0: Option<&[O]>,
    times: usize,
    (want, rows, bound): (&[f64], &[usize], f64),
) {
    let mut outs = Vec::new();
    for cluster in [WgmmaCluster::Pair, WgmmaCluster::Off] {
        let mut c = match c0 {
            Some(c0) => gpu.upload(c0).unwrap(),
            None => poisoned::<O>(gpu, case.c_len()),
        };
        for _ in 0..times {
            let engine = Engine::WgmmaVariant(config, cluster);
            run(engine, gpu, case, a, b, &mut c, c0.is_some());
        }
        outs.push(gpu.download(&c).unwrap());
    }
    let tag = format!("{what} {config:?} {case:?}");
    check_out(&tag, case, &outs[0], want, rows, bound);
    let differ = bits(&outs[0])
        .iter()
        .zip(bits(&outs[1]))
        .filter(|(x, y)| **x != *y)
        .count();
    assert_eq!(
        differ, 0,
        "{tag}: {differ} elements differ from the 1-block kernel"
    );
}

/// Every output mode of one case on fresh inputs, for each of `configs`.
fn multicast_case(gpu: &CudaBackend, rng: &mut Rng, case: Case, configs: &[WgmmaConfig]) {
    let Case { m, n, k, batch, .. } = case;
    let (aq, a) = bf16::quantize(&rng.vec(batch * m * k, 1.0));
    let (bq, b) = bf16::quantize(&rng.vec(batch * k * n, 1.0));
    let rows = rows_to_check(&case, rng);
    let ab = reference(&case, &a, &b, &rows);
    let (ga, gb) = (gpu.upload(&aq).unwrap(), gpu.upload(&bq).unwrap());
    // Accumulators of about the product's size.
    let c0_scale = (k as f32).sqrt().max(1.0) * 0.5;
    let (c0_bf16q, c0_bf16) = bf16::quantize(&rng.vec(case.c_len(), c0_scale));
    let c0_f32 = rng.vec(case.c_len(), c0_scale);
    let plus = |c0: &[f32], times: f64| -> Vec<f64> {
        ab.iter()
            .zip(pick_rows(&case, c0, &rows))
            .map(|(&p, c0)| c0 as f64 + times * p)
            .collect()
    };
    let (f32_twice, bf16_once) = (plus(&c0_f32, 2.0), plus(&c0_bf16, 1.0));
    for &config in configs {
        let ops = (&ga, &gb);
        check_mode::<bf16>(
            gpu,
            "bf16 out",
            config,
            &case,
            ops,
            None,
            1,
            (&ab, &rows, BF16_OUT_BOUND),
        );
        check_mode::<f32>(
            gpu,
            "f32 out",
            config,
            &case,
            ops,
            None,
            1,
            (&ab, &rows, F32_OUT_BOUND),
        );
        check_mode::<f32>(
            gpu,
            "f32 += ×2",
            config,
            &case,
            ops,
            Some(&c0_f32),
            2,
            (&f32_twice, &rows, F32_OUT_BOUND),
        );
        check_mode::<bf16>(
            gpu,
            "bf16 +=",
            config,
            &case,
            ops,
            Some(&c0_bf16q),
            1,
            (&bf16_once, &rows, BF16_OUT_BOUND),
        );
    }
}

fn cases() -> Vec<Case> {
    let mut out: Vec<Case> = LAYOUTS
        .iter()
        .flat_map(|&layout| {
            SHAPES.iter().map(move |&(m, n, k, batch)| Case {
                layout,
                m,
                n,
                k,
                batch,
            })
        })
        .collect();
    out.extend(LAYOUT_SHAPES.iter().map(|&(layout, m, n, k, batch)| Case {
        layout,
        m,
        n,
        k,
        batch,
    }));
    out
}

#[test]
fn wgmma_multicast_shapes_are_ones_tma_can_read() {
    for case in cases()
        .into_iter()
        .chain(MODEL_SHAPES.iter().map(|&(layout, m, n, k, batch)| Case {
            layout,
            m,
            n,
            k,
            batch,
        }))
    {
        let Case {
            layout, m, n, k, ..
        } = case;
        assert!(
            layout.vectorized(m, n, k) && k > 0,
            "{case:?}: not a shape the wgmma kernels take"
        );
    }
}

#[test]
fn wgmma_multicast_matches_f64_and_the_single_block_kernel_on_tile_edges() {
    let Some(gpu) = hopper_gpu(WGMMA_MULTICAST) else {
        return;
    };
    let mut rng = Rng::new("wgmma_multicast_edges");
    for case in cases() {
        multicast_case(gpu, &mut rng, case, &CONFIGS);
    }
}

#[test]
fn wgmma_multicast_matches_f64_at_2048_tokens() {
    let Some(gpu) = hopper_gpu(WGMMA_MULTICAST) else {
        return;
    };
    let mut rng = Rng::new("wgmma_multicast_model");
    for &(layout, m, n, k, batch) in MODEL_SHAPES {
        let case = Case {
            layout,
            m,
            n,
            k,
            batch,
        };
        // The variant the dispatch picks for it, with clusters forced (and, inside, without).
        multicast_case(gpu, &mut rng, case, &[WgmmaConfig::AUTO]);
    }
}

/// The same inputs give the same bits on a second run (a race between the two blocks'
/// producers and consumers would not), at shapes where every cluster walks several pairs.
#[test]
fn wgmma_multicast_is_deterministic() {
    let Some(gpu) = hopper_gpu(WGMMA_MULTICAST) else {
        return;
    };
    let mut rng = Rng::new("wgmma_multicast_deterministic");
    for &(layout, m, n, k, batch) in &[
        (GemmLayout::NT, 2056, 4104, 1032, 1),
        (GemmLayout::NN, 1928, 2056, 2056, 2),
        (GemmLayout::TN, 2312, 2048, 4104, 1),
    ] {
        let case = Case {
            layout,
            m,
            n,
            k,
            batch,
        };
        let (ga, gb) = case.random_operands(gpu, &mut rng);
        for config in CONFIGS {
            let mut outs = Vec::new();
            for _ in 0..3 {
                let mut c = poisoned::<f32>(gpu, case.c_len());
                let engine = Engine::WgmmaVariant(config, WgmmaCluster::Pair);
                run(engine, gpu, &case, &ga, &gb, &mut c, false);
                outs.push(bits(&gpu.download(&c).unwrap()));
            }
            for run_outs in &outs[1..] {
                let differ = outs[0].iter().zip(run_outs).filter(|(x, y)| x != y).count();
                assert_eq!(differ, 0, "{config:?} {case:?}: {differ} elements differ");
            }
        }
    }
}

/// What the automatic choice (the one `gemm_bf16` and `gemm_bf16_wgmma` take) resolves to on
/// this device: 2-block clusters fit (the driver's count is printed), and at the model's
/// 2048-token products Auto takes the plan's choice for that count (Pair wherever pairs cost
/// no wave: all of them with 66 clusters, plan.rs's unit test), unless `IMPLICIT_GEMM` says
/// wgmma-nocluster; one block for a lone tile row.
#[test]
fn wgmma_multicast_is_what_the_dispatch_picks_at_model_shapes() {
    let Some(gpu) = hopper_gpu(WGMMA_MULTICAST) else {
        return;
    };
    let allowed = wgmma_clusters_allowed().unwrap();
    eprintln!(
        "{GEMM_ENV}: clusters allowed {allowed}; {}",
        gpu.large_gemm_kernel()
    );
    let sms = gpu.multiprocessor_count();
    for &(layout, m, n, _, batch) in MODEL_SHAPES {
        for tile in [WgmmaTile::Wide, WgmmaTile::Square] {
            let slots = gpu.wgmma_cluster_slots::<f32>(layout, tile).unwrap();
            let planned = wgmma_cluster_for(m, n, batch, tile_columns(tile), sms, slots);
            let want = if allowed { planned } else { WgmmaCluster::Off };
            let got = gpu
                .wgmma_cluster::<f32>(WgmmaCluster::Auto, layout, tile, m, n, batch)
                .unwrap();
            eprintln!(
                "{layout:?} {m}x{n} {tile:?}: {slots} clusters of 2 fit on {sms} SMs; {got:?}"
            );
            assert_eq!(got, want, "{layout:?} {m}x{n} {tile:?}");
        }
    }
    let lone_row = gpu
        .wgmma_cluster::<f32>(
            WgmmaCluster::Auto,
            GemmLayout::NT,
            WgmmaTile::Wide,
            128,
            4096,
            1,
        )
        .unwrap();
    assert_eq!(lone_row, WgmmaCluster::Off);
    // Forcing clusters works wherever the device fits one (the tests above rely on it) and
    // forcing them off always does.
    for forced in [WgmmaCluster::Pair, WgmmaCluster::Off] {
        let got = gpu
            .wgmma_cluster::<bf16>(forced, GemmLayout::TN, WgmmaTile::Square, 128, 128, 1)
            .unwrap();
        assert_eq!(got, forced);
    }
}

#[test]
fn wgmma_nocluster_is_a_value_of_implicit_gemm() {
    assert_eq!(
        GemmChoice::parse(Some(GEMM_NO_CLUSTER)).unwrap(),
        GemmChoice::Wgmma
    );
    let e = GemmChoice::parse(Some("wgmma-clusters"))
        .unwrap_err()
        .to_string();
    assert!(e.contains(GEMM_ENV) && e.contains(GEMM_NO_CLUSTER), "{e}");
}
