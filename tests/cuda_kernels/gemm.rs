//! The bf16 GEMM (kernels/gemm.cu) and the cuBLAS path against an f64 reference computed on
//! the CPU from the same bf16-rounded inputs: every layout × {bf16 out, f32 out, f32
//! accumulated twice (micro-batches), bf16 accumulated}, odd shapes (both the 16-byte and the
//! scalar path of every layout), batches, and Llama-2-7B's shapes (checked on a sample of rows
//! to keep the CPU time sane; every output element is still checked to be written).
//! Bounds (‖out − ref‖/‖ref‖): 8e-3 for bf16 outputs, 2e-3 for f32 outputs.
//!
//! The `wgmma_*` tests call the Hopper kernels (kernels/gemm_wgmma.cu) directly through
//! `gemm_bf16_wgmma` (not through `IMPLICIT_GEMM`): every tile edge (M, N, K tails, K shorter
//! than one stage, more tiles than blocks, batches), every layout, both outputs, accumulation,
//! and run-to-run bit equality. They skip without a GPU and on devices other than compute
//! capability 9.0, and fail on a 9.0 device where the wgmma path is unavailable. Since the
//! first H100 run validated them, `gemm_bf16` takes them by default on such a device
//! (`IMPLICIT_GEMM=mma` forces kernels/gemm.cu): `wgmma_is_the_default_gemm_on_hopper` checks
//! which kernel the dispatch ran, bit for bit.

use crate::common::gpu::{gpu, hopper_gpu, poisoned, rel_err, Dtype, Rng};
use half::bf16;
use implicit::backend::cuda::{
    gemm_choice, tma_epilogue_problem, CudaBackend, DeviceBuffer, GemmChoice, GemmLayout,
    WgmmaConfig, WgmmaEpilogue, WgmmaTile, GEMM_ENV,
};

/// What a test here names when it skips off compute capability 9.0 (`hopper_gpu`).
const WGMMA: &str = "wgmma";

const BF16_OUT_BOUND: f64 = 8e-3;
const F32_OUT_BOUND: f64 = 2e-3;
/// Products (m·n·k·batch) above this are checked on a sample of rows.
const FULL_CHECK_MACS: usize = 1 << 27;
/// Rows of C checked (in every batch) when sampling.
const SAMPLED_ROWS: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Engine {
    Ours,
    Cublas,
    /// kernels/gemm_wgmma.cu, called directly.
    Wgmma,
    /// `gemm_bf16`, which picks one of the above (`IMPLICIT_GEMM`).
    Dispatch,
    /// kernels/gemm_wgmma.cu with its tile and epilogue forced.
    WgmmaWith(WgmmaConfig),
}

#[derive(Clone, Copy, Debug)]
struct Case {
    layout: GemmLayout,
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
}

impl Case {
    fn new(layout: GemmLayout, m: usize, n: usize, k: usize, batch: usize) -> Case {
        Case {
            layout,
            m,
            n,
            k,
            batch,
        }
    }

    fn a_len(&self) -> usize {
        self.batch * self.m * self.k
    }
    fn b_len(&self) -> usize {
        self.batch * self.k * self.n
    }
    fn c_len(&self) -> usize {
        self.batch * self.m * self.n
    }

    /// Fresh uniform A and B in [−1, 1), rounded to bf16, on the GPU.
    fn random_operands(
        &self,
        gpu: &CudaBackend,
        rng: &mut Rng,
    ) -> (DeviceBuffer<bf16>, DeviceBuffer<bf16>) {
        let (aq, _) = bf16::quantize(&rng.vec(self.a_len(), 1.0));
        let (bq, _) = bf16::quantize(&rng.vec(self.b_len(), 1.0));
        (gpu.upload(&aq).unwrap(), gpu.upload(&bq).unwrap())
    }
}

/// Rows i of C (the same in every batch) the reference computes.
fn rows_to_check(case: &Case, rng: &mut Rng) -> Vec<usize> {
    let Case { m, n, k, batch, .. } = *case;
    if m * n * k.max(1) * batch <= FULL_CHECK_MACS || m <= SAMPLED_ROWS {
        return (0..m).collect();
    }
    let mut rows = vec![0, m - 1, m / 2];
    while rows.len() < SAMPLED_ROWS {
        let r = rng.below(m);
        if !rows.contains(&r) {
            rows.push(r);
        }
    }
    rows.sort();
    rows
}

/// C[b][i][j] = Σ_p A(b,i,p)·B(b,p,j) in f64, for i in `rows`, laid out [batch][rows][n].
fn reference(case: &Case, a: &[f32], b: &[f32], rows: &[usize]) -> Vec<f64> {
    let Case {
        layout,
        m,
        n,
        k,
        batch,
    } = *case;
    let mut out = vec![0.0f64; batch * rows.len() * n];
    for bi in 0..batch {
        let (a, b) = (
            &a[bi * m * k..(bi + 1) * m * k],
            &b[bi * k * n..(bi + 1) * k * n],
        );
        for (ri, &i) in rows.iter().enumerate() {
            let a_row: Vec<f64> = (0..k)
                .map(|p| match layout {
                    GemmLayout::NN | GemmLayout::NT => a[i * k + p] as f64,
                    GemmLayout::TN => a[p * m + i] as f64,
                })
                .collect();
            let c = &mut out[(bi * rows.len() + ri) * n..][..n];
            match layout {
                GemmLayout::NN | GemmLayout::TN => {
                    for (p, &av) in a_row.iter().enumerate() {
                        for (cj, &bv) in c.iter_mut().zip(&b[p * n..(p + 1) * n]) {
                            *cj += av * bv as f64;
                        }
                    }
                }
                GemmLayout::NT => {
                    for (j, cj) in c.iter_mut().enumerate() {
                        *cj = a_row
                            .iter()
                            .zip(&b[j * k..(j + 1) * k])
                            .map(|(&av, &bv)| av * bv as f64)
                            .sum();
                    }
                }
            }
        }
    }
    out
}

/// The rows of `c` ([batch, m, n]) the reference holds, widened.
fn pick_rows<T: Dtype>(case: &Case, c: &[T], rows: &[usize]) -> Vec<T> {
    let (m, n) = (case.m, case.n);
    let mut out = Vec::with_capacity(case.batch * rows.len() * n);
    for bi in 0..case.batch {
        for &i in rows {
            out.extend_from_slice(&c[(bi * m + i) * n..][..n]);
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn run<O: Dtype>(
    engine: Engine,
    gpu: &CudaBackend,
    case: &Case,
    a: &DeviceBuffer<bf16>,
    b: &DeviceBuffer<bf16>,
    c: &mut DeviceBuffer<O>,
    accumulate: bool,
) {
    let Case {
        layout,
        m,
        n,
        k,
        batch,
    } = *case;
    let result = match engine {
        Engine::Ours => gpu.gemm_bf16_mma(layout, m, n, k, batch, a, b, c, accumulate),
        Engine::Cublas => gpu.cublas_gemm_bf16(layout, m, n, k, batch, a, b, c, accumulate),
        Engine::Wgmma => gpu.gemm_bf16_wgmma(layout, m, n, k, batch, a, b, c, accumulate),
        Engine::Dispatch => gpu.gemm_bf16(layout, m, n, k, batch, a, b, c, accumulate),
        Engine::WgmmaWith(config) => {
            gpu.gemm_bf16_wgmma_with(config, layout, m, n, k, batch, a, b, c, accumulate)
        }
    };
    result.unwrap_or_else(|e| panic!("{engine:?} {case:?}: {e}"));
}

/// Whether `engine` forces the TMA epilogue where C cannot take it (bf16 C += A·B, rows not
/// 16-byte multiples); then checks that the product is refused, names the reason and leaves C
/// as it was, and returns true (the caller skips that output mode).
fn refused_tma_epilogue<O: Dtype>(
    engine: Engine,
    gpu: &CudaBackend,
    case: &Case,
    a: &DeviceBuffer<bf16>,
    b: &DeviceBuffer<bf16>,
    accumulate: bool,
) -> bool {
    let Engine::WgmmaWith(config) = engine else {
        return false;
    };
    let bytes = std::mem::size_of::<O>();
    if config.epilogue != WgmmaEpilogue::Tma
        || tma_epilogue_problem(bytes, case.m, case.n, accumulate, 0).is_none()
    {
        return false;
    }
    let Case {
        layout,
        m,
        n,
        k,
        batch,
    } = *case;
    let mut c = poisoned::<O>(gpu, case.c_len());
    match gpu.gemm_bf16_wgmma_with(config, layout, m, n, k, batch, a, b, &mut c, accumulate) {
        Ok(()) => panic!("{engine:?} {case:?} accumulate {accumulate}: forced TMA accepted"),
        Err(e) => assert!(e.to_string().contains("no TMA epilogue"), "{e}"),
    }
    let out = gpu.download(&c).unwrap();
    assert!(
        out.iter().all(|v| v.to_f32().is_nan()),
        "{case:?}: refused, yet wrote C"
    );
    true
}

/// Checks `out` (all of C) against the reference rows: every element finite, then the error.
fn check_out<O: Dtype>(
    what: &str,
    case: &Case,
    out: &[O],
    want: &[f64],
    rows: &[usize],
    bound: f64,
) {
    if let Some(i) = out.iter().position(|v| !v.to_f32().is_finite()) {
        panic!("{what}: C[{}] = {} (not written?)", i, out[i].to_f32());
    }
    let e = rel_err(&pick_rows(case, out, rows), want);
    eprintln!(
        "{what}: rel err {e:.2e} (bound {bound:.0e}, {} of {} rows)",
        rows.len(),
        case.m
    );
    assert!(e <= bound, "{what}: rel err {e:.3e} > {bound:.0e}");
}

/// One case, on `engines`, in every output mode, on fresh inputs.
fn gemm_case(gpu: &CudaBackend, rng: &mut Rng, case: Case, engines: &[Engine]) {
    let (aq, a) = bf16::quantize(&rng.vec(case.a_len(), 1.0));
    let (bq, b) = bf16::quantize(&rng.vec(case.b_len(), 1.0));
    let rows = rows_to_check(&case, rng);
    let ab = reference(&case, &a, &b, &rows);
    let (ga, gb) = match (gpu.upload(&aq), gpu.upload(&bq)) {
        (Ok(ga), Ok(gb)) => (ga, gb),
        // The driver may refuse a 0-byte allocation: then no k = 0 product can be asked for.
        (Err(e), _) | (_, Err(e)) if case.k == 0 => {
            eprintln!("{case:?}: skipped, no empty device buffer ({e})");
            return;
        }
        (a, b) => panic!("{case:?}: upload: {:?} {:?}", a.err(), b.err()),
    };
    // The accumulators start at values of about the product's size.
    let c0_scale = (case.k as f32).sqrt().max(1.0) * 0.5;
    let (c0_bf16q, c0_bf16) = bf16::quantize(&rng.vec(case.c_len(), c0_scale));
    let c0_f32 = rng.vec(case.c_len(), c0_scale);
    let path = if case.layout.vectorized(case.m, case.n, case.k) {
        "16-byte"
    } else {
        "scalar"
    };
    for &engine in engines {
        let tag = format!(
            "{engine:?} {:?} {}x{}x{} batch {} ({path})",
            case.layout, case.m, case.n, case.k, case.batch
        );

        if !refused_tma_epilogue::<bf16>(engine, gpu, &case, &ga, &gb, false) {
            let mut c = poisoned::<bf16>(gpu, case.c_len());
            run(engine, gpu, &case, &ga, &gb, &mut c, false);
            let out = gpu.download(&c).unwrap();
            check_out(
                &format!("{tag} bf16 out"),
                &case,
                &out,
                &ab,
                &rows,
                BF16_OUT_BOUND,
            );
        }
        if !refused_tma_epilogue::<f32>(engine, gpu, &case, &ga, &gb, false) {
            let mut c = poisoned::<f32>(gpu, case.c_len());
            run(engine, gpu, &case, &ga, &gb, &mut c, false);
            let out = gpu.download(&c).unwrap();
            check_out(
                &format!("{tag} f32 out"),
                &case,
                &out,
                &ab,
                &rows,
                F32_OUT_BOUND,
            );
        }
        if !refused_tma_epilogue::<f32>(engine, gpu, &case, &ga, &gb, true) {
            // Two micro-batches into an f32 gradient: C0 + A·B + A·B.
            let mut c = gpu.upload(&c0_f32).unwrap();
            run(engine, gpu, &case, &ga, &gb, &mut c, true);
            run(engine, gpu, &case, &ga, &gb, &mut c, true);
            let c0_rows = pick_rows(&case, &c0_f32, &rows);
            let want: Vec<f64> = ab
                .iter()
                .zip(&c0_rows)
                .map(|(&p, &c0)| c0 as f64 + 2.0 * p)
                .collect();
            let out = gpu.download(&c).unwrap();
            check_out(
                &format!("{tag} f32 accumulate ×2"),
                &case,
                &out,
                &want,
                &rows,
                F32_OUT_BOUND,
            );
        }
        if refused_tma_epilogue::<bf16>(engine, gpu, &case, &ga, &gb, true) {
            continue;
        }
        let mut c = gpu.upload(&c0_bf16q).unwrap();
        run(engine, gpu, &case, &ga, &gb, &mut c, true);
        let c0_rows = pick_rows(&case, &c0_bf16, &rows);
        let want: Vec<f64> = ab
            .iter()
            .zip(&c0_rows)
            .map(|(&p, &c0)| c0 as f64 + p)
            .collect();
        let out = gpu.download(&c).unwrap();
        check_out(
            &format!("{tag} bf16 accumulate"),
            &case,
            &out,
            &want,
            &rows,
            BF16_OUT_BOUND,
        );
    }
}

const LAYOUTS: [GemmLayout; 3] = [GemmLayout::NN, GemmLayout::NT, GemmLayout::TN];

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
        match result {
            Ok(()) => panic!("{what}: accepted"),
            Err(e) => {
                eprintln!("{what}: {e}");
                assert!(e.to_string().contains(" m "), "{what}: {e} names no shapes");
            }
        }
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
        match result {
            Ok(()) => panic!("{what}: accepted"),
            Err(e) => {
                eprintln!("{what}: {e}");
                let e = e.to_string();
                assert!(e.contains(" m ") && e.contains("wgmma"), "{what}: {e}");
            }
        }
    }
    // Refused products leave C as it was.
    assert!(gpu.download(&c64).unwrap().iter().all(|v| v.is_nan()));
}

#[test]
fn implicit_gemm_names_the_kernels_or_is_an_error() {
    for (value, want) in [
        (None, Some(GemmChoice::Wgmma)),
        (Some(""), Some(GemmChoice::Wgmma)),
        (Some("auto"), Some(GemmChoice::Wgmma)),
        (Some("wgmma"), Some(GemmChoice::Wgmma)),
        (Some(" mma "), Some(GemmChoice::Mma)),
        (Some("cublas"), None),
        (Some("MMA"), None),
    ] {
        match (GemmChoice::parse(value), want) {
            (Ok(got), Some(want)) => assert_eq!(got, want, "{value:?}"),
            (Err(e), None) => assert!(e.to_string().contains(GEMM_ENV), "{value:?}: {e}"),
            (got, want) => panic!("{value:?}: got {got:?}, want {want:?}"),
        }
    }
}

/// What `gemm_bf16` runs on a compute-capability-9.0 device: the wgmma kernel for shapes TMA can
/// read (bit for bit its output, which differs from kernels/gemm.cu's in the last bits), the
/// mma.sync kernel for shapes it cannot; under `IMPLICIT_GEMM=mma` the mma.sync kernel always.
#[test]
fn wgmma_is_the_default_gemm_on_hopper() {
    let Some(gpu) = hopper_gpu(WGMMA) else { return };
    let choice = gemm_choice().unwrap();
    eprintln!("{GEMM_ENV}: {choice:?}");
    let mut rng = Rng::new("wgmma_default");
    // k = 4104 (a long f32 sum) makes the two kernels' summation orders differ somewhere; k = 12
    // gives NT rows of 24 bytes, which TMA cannot read.
    for (case, tma_reads) in [
        (Case::new(GemmLayout::NT, 264, 520, 4104, 1), true),
        (Case::new(GemmLayout::NN, 136, 264, 4104, 2), true),
        (Case::new(GemmLayout::NT, 40, 24, 12, 1), false),
    ] {
        let (ga, gb) = case.random_operands(gpu, &mut rng);
        let mut outs = Vec::new();
        for engine in [Engine::Dispatch, Engine::Wgmma, Engine::Ours] {
            if engine == Engine::Wgmma && !tma_reads {
                outs.push(Vec::new());
                continue;
            }
            let mut c = poisoned::<f32>(gpu, case.c_len());
            run(engine, gpu, &case, &ga, &gb, &mut c, false);
            outs.push(gpu.download(&c).unwrap());
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let (dispatch, wgmma, mma) = (bits(&outs[0]), bits(&outs[1]), bits(&outs[2]));
        let expect_wgmma = tma_reads && choice == GemmChoice::Wgmma;
        if expect_wgmma {
            assert_ne!(
                wgmma, mma,
                "{case:?}: the kernels agree bit for bit; pick another k"
            );
            assert_eq!(
                dispatch, wgmma,
                "{case:?}: gemm_bf16 did not run the wgmma kernel"
            );
        } else {
            assert_eq!(
                dispatch, mma,
                "{case:?}: gemm_bf16 did not run the mma.sync kernel"
            );
        }
    }
}
