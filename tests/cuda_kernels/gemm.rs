//! The bf16 GEMM (kernels/gemm.cu, with kernels/gemv.cu for decode-sized products) and the
//! cuBLAS path against gemm_support.rs's f64 reference: every layout × every output mode, odd
//! shapes (both the 16-byte and the scalar path of every layout), batches, and Llama-2-7B's
//! shapes (checked on a sample of rows to keep the CPU time sane; every output element is still
//! checked to be written); bad shapes are errors. `gemm_speed` (ignored) times ours against
//! cuBLAS and the wgmma kernels.

use super::gemm_support::{gemm_case, refusal, run, Case, Engine, LAYOUTS};
use crate::common::gpu::{gpu, poisoned, Rng};
use half::bf16;
use implicit::backend::cuda::GemmLayout;

/// (m, n, k, batch): edge tiles in every dimension, k tails, both load paths of each layout.
const ODD_SHAPES: &[(usize, usize, usize, usize)] = &[
    (1, 64, 64, 1),
    (1, 4096, 4096, 1), // one token against a layer
    (8, 8, 8, 1),
    (7, 13, 24, 1),
    (129, 257, 72, 1),
    (128, 256, 40, 1),  // k not a multiple of the 32-wide k tile
    (136, 200, 30, 1),  // k not a multiple of 8: TN stays on the 16-byte path
    (33, 17, 5, 3),     // k < 8, batch 3
    (65, 72, 48, 3),    // batch 3
    (72, 136, 40, 2),   // batch 2 with m, n multiples of 8: TN batched on the 16-byte path
    (257, 129, 100, 2), // k % 8 = 4
    (200, 64, 1, 1),
    (64, 40, 0, 1), // k = 0: C = 0, or C unchanged when accumulating
    (300, 520, 264, 1),
];

/// Llama-2-7B at 512 tokens: forward X·Wᵀ (NT), input gradients dY·W (NN), weight gradients
/// dYᵀ·X (TN), and attention's batched products over 32 heads of 128.
const MODEL_SHAPES: &[(GemmLayout, usize, usize, usize, usize)] = &[
    (GemmLayout::NT, 512, 4096, 4096, 1),  // q/k/v/o projections
    (GemmLayout::NT, 512, 11008, 4096, 1), // gate/up
    (GemmLayout::NT, 512, 4096, 11008, 1), // down
    (GemmLayout::NN, 512, 11008, 4096, 1), // dX of down
    (GemmLayout::NN, 512, 4096, 11008, 1), // dX of gate/up
    (GemmLayout::TN, 11008, 4096, 512, 1), // dW of gate/up
    (GemmLayout::TN, 4096, 11008, 512, 1), // dW of down
    (GemmLayout::NT, 512, 512, 128, 32),   // scores Q·Kᵀ per head
    (GemmLayout::NN, 512, 128, 512, 32),   // P·V per head
];

#[test]
fn gemm_covers_both_load_paths_of_every_layout() {
    for layout in LAYOUTS {
        let paths: Vec<bool> = ODD_SHAPES
            .iter()
            .map(|&(m, n, k, _)| layout.vectorized(m, n, k))
            .collect();
        assert!(
            paths.contains(&true) && paths.contains(&false),
            "{layout:?}: ODD_SHAPES must exercise both the 16-byte and the scalar path"
        );
    }
}

#[test]
fn gemm_matches_f64_on_odd_shapes() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("gemm_odd");
    for layout in LAYOUTS {
        for &(m, n, k, batch) in ODD_SHAPES {
            gemm_case(
                gpu,
                &mut rng,
                Case::new(layout, m, n, k, batch),
                &[Engine::Ours],
            );
        }
    }
}

/// Decode-sized products (at most GEMV_MAX_ROWS rows, NT, k a multiple of 8) take
/// kernels/gemv.cu: every row count 1..=8, odd column counts, a batch, Llama-2-7B's widths.
#[test]
fn skinny_products_match_f64() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("gemm_skinny");
    assert_eq!(implicit::backend::cuda::GEMV_MAX_ROWS, 8);
    for m in 1..=8 {
        for &(n, k, batch) in &[(37, 40, 1), (4099, 256, 2), (11008, 4096, 1)] {
            gemm_case(
                gpu,
                &mut rng,
                Case::new(GemmLayout::NT, m, n, k, batch),
                &[Engine::Ours],
            );
        }
    }
    // Nine rows, and k not a multiple of 8, stay on the tiled kernels.
    for &(m, n, k) in &[(9, 300, 64), (3, 300, 61)] {
        gemm_case(
            gpu,
            &mut rng,
            Case::new(GemmLayout::NT, m, n, k, 1),
            &[Engine::Ours],
        );
    }
}

#[test]
fn gemm_matches_f64_on_model_shapes() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("gemm_model");
    for &(layout, m, n, k, batch) in MODEL_SHAPES {
        gemm_case(
            gpu,
            &mut rng,
            Case::new(layout, m, n, k, batch),
            &[Engine::Ours],
        );
    }
}

#[test]
fn cublas_gemm_matches_f64() {
    let Some(gpu) = gpu() else { return };
    if let Err(e) = gpu.cublas_available() {
        println!("SKIPPED (no cuBLAS): {e}");
        return;
    }
    let mut rng = Rng::new("gemm_cublas");
    for layout in LAYOUTS {
        for &(m, n, k, batch) in &[
            (7, 13, 24, 1),
            (129, 257, 72, 1),
            (33, 17, 5, 3),
            (64, 40, 0, 1),
        ] {
            gemm_case(
                gpu,
                &mut rng,
                Case::new(layout, m, n, k, batch),
                &[Engine::Cublas],
            );
        }
    }
    for &(layout, m, n, k, batch) in &MODEL_SHAPES[..1] {
        gemm_case(
            gpu,
            &mut rng,
            Case::new(layout, m, n, k, batch),
            &[Engine::Cublas],
        );
    }
}

#[test]
fn gemm_rejects_bad_shapes_with_errors() {
    let Some(gpu) = gpu() else { return };
    let a = gpu.upload(&[bf16::ONE; 4 * 6]).unwrap();
    let b = gpu.upload(&[bf16::ONE; 6 * 5]).unwrap();
    let mut c = poisoned::<f32>(gpu, 4 * 5);
    let mut c_long = gpu.alloc::<bf16>(4 * 5 + 1).unwrap();
    gpu.gemm_bf16(GemmLayout::NN, 4, 5, 6, 1, &a, &b, &mut c, false)
        .unwrap();
    assert_eq!(gpu.download(&c).unwrap(), vec![6.0f32; 20]);
    for (what, result) in [
        (
            "A too short",
            gpu.gemm_bf16(GemmLayout::NN, 4, 5, 7, 1, &a, &b, &mut c, false),
        ),
        (
            "batch 2",
            gpu.gemm_bf16(GemmLayout::NT, 4, 5, 6, 2, &a, &b, &mut c, false),
        ),
        (
            "C too long",
            gpu.gemm_bf16(GemmLayout::TN, 4, 5, 6, 1, &a, &b, &mut c_long, false),
        ),
        (
            "batch over the grid",
            gpu.gemm_bf16(GemmLayout::NN, 0, 5, 6, 70000, &a, &b, &mut c, false),
        ),
        (
            "cuBLAS, A too short",
            gpu.cublas_gemm_bf16(GemmLayout::NN, 4, 5, 8, 1, &a, &b, &mut c, false),
        ),
    ] {
        let e = refusal(what, result);
        assert!(e.contains(" m "), "{what}: {e} names no shapes");
    }
}

/// Times (host clock around synchronised launches: median of 7 samples of 10 launches, two
/// input sets alternating) ours against cuBLAS at 4096³ and Llama-2-7B's shapes at 4096
/// tokens. Not a test of correctness: run with `--ignored gemm_speed --nocapture`.
#[test]
#[ignore]
fn gemm_speed() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("gemm_speed");
    let have_cublas = gpu.cublas_available();
    if let Err(e) = &have_cublas {
        println!("no cuBLAS: {e}");
    }
    let have_wgmma = gpu.wgmma_available();
    if let Err(e) = &have_wgmma {
        println!("no wgmma: {e}");
    }
    let shapes: &[(&str, GemmLayout, usize, usize, usize)] = &[
        ("4096³ NN", GemmLayout::NN, 4096, 4096, 4096),
        ("4096³ NT", GemmLayout::NT, 4096, 4096, 4096),
        ("4096³ TN (f32 +=)", GemmLayout::TN, 4096, 4096, 4096),
        ("q/k/v/o x·Wᵀ", GemmLayout::NT, 4096, 4096, 4096),
        ("fused qkv x·Wᵀ", GemmLayout::NT, 4096, 12288, 4096),
        ("gate/up x·Wᵀ", GemmLayout::NT, 4096, 11008, 4096),
        ("down x·Wᵀ", GemmLayout::NT, 4096, 4096, 11008),
        ("dX of gate/up dY·W", GemmLayout::NN, 4096, 4096, 11008),
        ("dX of down dY·W", GemmLayout::NN, 4096, 11008, 4096),
        ("dW of gate/up (f32 +=)", GemmLayout::TN, 11008, 4096, 4096),
        ("dW of down (f32 +=)", GemmLayout::TN, 4096, 11008, 4096),
    ];
    let mut table = vec![format!(
        "{:<24} {:>20} {:>10} {:>8} {:>10} {:>8} {:>6} {:>10} {:>8} {:>6}",
        "shape",
        "m x n x k",
        "ours ms",
        "TFLOP/s",
        "cuBLAS ms",
        "TFLOP/s",
        "ratio",
        "wgmma ms",
        "TFLOP/s",
        "ratio"
    )];
    for &(name, layout, m, n, k) in shapes {
        let case = Case::new(layout, m, n, k, 1);
        let inputs: Vec<_> = (0..2)
            .map(|_| case.random_operands(gpu, &mut rng))
            .collect();
        let f32_acc = layout == GemmLayout::TN;
        let mut c_bf16 = poisoned::<bf16>(gpu, case.c_len());
        let mut c_f32 = gpu.zeros::<f32>(case.c_len()).unwrap();
        let mut time = |engine: Engine| -> f64 {
            let mut launch = |i: usize| {
                let (a, b) = &inputs[i % 2];
                if f32_acc {
                    run(engine, gpu, &case, a, b, &mut c_f32, true);
                } else {
                    run(engine, gpu, &case, a, b, &mut c_bf16, false);
                }
            };
            for i in 0..3 {
                launch(i);
            }
            gpu.synchronize().unwrap();
            let mut samples: Vec<f64> = (0..7)
                .map(|_| {
                    let t = std::time::Instant::now();
                    for i in 0..10 {
                        launch(i);
                    }
                    gpu.synchronize().unwrap();
                    t.elapsed().as_secs_f64() / 10.0
                })
                .collect();
            samples.sort_by(f64::total_cmp);
            samples[3]
        };
        let flops = 2.0 * (m * n * k) as f64;
        let ours = time(Engine::Ours);
        let theirs = if have_cublas.is_ok() {
            time(Engine::Cublas)
        } else {
            f64::NAN
        };
        let wgmma = if have_wgmma.is_ok() {
            time(Engine::Wgmma)
        } else {
            f64::NAN
        };
        table.push(format!(
            "{:<24} {:>20} {:>10.3} {:>8.1} {:>10.3} {:>8.1} {:>6.2} {:>10.3} {:>8.1} {:>6.2}",
            name,
            format!("{m}x{n}x{k}"),
            ours * 1e3,
            flops / ours / 1e12,
            theirs * 1e3,
            flops / theirs / 1e12,
            theirs / ours,
            wgmma * 1e3,
            flops / wgmma / 1e12,
            theirs / wgmma
        ));
    }
    println!("{}", table.join("\n"));
}
