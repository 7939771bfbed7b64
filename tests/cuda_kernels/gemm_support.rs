//! What every GEMM test here shares (tests/cuda_kernels/gemm.rs, gemm_wgmma.rs,
//! gemm_dispatch.rs; gemm_skinny.rs and gemm_multicast.rs take its bounds, reference and row
//! sampling): the f64 reference computed on the CPU from the same bf16-rounded inputs
//! ([`reference`], on all rows of C or a sample of them, [`rows_to_check`], [`sample_rows`],
//! [`pick_rows`]), the products under test ([`Engine`], [`run`]), [`gemm_case`], which checks
//! one shape on some engines in every output mode: bf16 out, f32 out, f32 accumulated twice
//! (micro-batches), bf16 accumulated, and [`refusal`], the error of a product that must be
//! refused. Outputs are poisoned with NaN first, so that every element is checked to be
//! written even where only sampled rows are compared. Bounds (‖out − ref‖/‖ref‖): 8e-3 for bf16
//! outputs, 2e-3 for f32 outputs.

use crate::common::gpu::{poisoned, rel_err, Dtype, Rng};
use half::bf16;
use implicit::backend::cuda::{
    tma_epilogue_problem, CudaBackend, DeviceBuffer, GemmLayout, WgmmaCluster, WgmmaConfig,
    WgmmaEpilogue,
};

pub(crate) const BF16_OUT_BOUND: f64 = 8e-3;
pub(crate) const F32_OUT_BOUND: f64 = 2e-3;
/// Products (m·n·k·batch) above this are checked on a sample of rows.
pub(crate) const FULL_CHECK_MACS: usize = 1 << 27;
/// Rows of C checked (in every batch) when sampling.
pub(crate) const SAMPLED_ROWS: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Engine {
    Ours,
    Cublas,
    /// kernels/gemm_wgmma.cu, called directly.
    Wgmma,
    /// `gemm_bf16`, which picks one of the above (`IMPLICIT_GEMM`).
    Dispatch,
    /// kernels/gemm_wgmma.cu with its tile and epilogue forced.
    WgmmaWith(WgmmaConfig),
    /// kernels/gemm_wgmma.cu with its tile, epilogue and clusters forced.
    WgmmaVariant(WgmmaConfig, WgmmaCluster),
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Case {
    pub(crate) layout: GemmLayout,
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) batch: usize,
}

impl Case {
    pub(crate) fn new(layout: GemmLayout, m: usize, n: usize, k: usize, batch: usize) -> Case {
        Case {
            layout,
            m,
            n,
            k,
            batch,
        }
    }

    pub(crate) fn a_len(&self) -> usize {
        self.batch * self.m * self.k
    }
    pub(crate) fn b_len(&self) -> usize {
        self.batch * self.k * self.n
    }
    pub(crate) fn c_len(&self) -> usize {
        self.batch * self.m * self.n
    }

    /// Fresh uniform A and B in [−1, 1), rounded to bf16, on the GPU.
    pub(crate) fn random_operands(
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
pub(crate) fn rows_to_check(case: &Case, rng: &mut Rng) -> Vec<usize> {
    let Case { m, n, k, batch, .. } = *case;
    if m * n * k.max(1) * batch <= FULL_CHECK_MACS || m <= SAMPLED_ROWS {
        return (0..m).collect();
    }
    sample_rows(m, vec![0, m - 1, m / 2], rng)
}

/// `rows` (rows of an m-row C that must be checked) and random others, distinct, up to
/// [`SAMPLED_ROWS`] in all, sorted.
pub(crate) fn sample_rows(m: usize, mut rows: Vec<usize>, rng: &mut Rng) -> Vec<usize> {
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
pub(crate) fn reference(case: &Case, a: &[f32], b: &[f32], rows: &[usize]) -> Vec<f64> {
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
pub(crate) fn pick_rows<T: Dtype>(case: &Case, c: &[T], rows: &[usize]) -> Vec<T> {
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
pub(crate) fn run<O: Dtype>(
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
        Engine::WgmmaVariant(config, cluster) => gpu
            .gemm_bf16_wgmma_variant(config, cluster, layout, m, n, k, batch, a, b, c, accumulate),
    };
    result.unwrap_or_else(|e| panic!("{engine:?} {case:?} accumulate {accumulate}: {e}"));
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

/// The error of a product that must be refused (printed; a product accepted fails the test).
pub(crate) fn refusal(what: &str, result: implicit::Result<()>) -> String {
    match result {
        Ok(()) => panic!("{what}: accepted"),
        Err(e) => {
            eprintln!("{what}: {e}");
            e.to_string()
        }
    }
}

/// Checks `out` (all of C) against the reference rows: every element finite, then the error.
pub(crate) fn check_out<O: Dtype>(
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
pub(crate) fn gemm_case(gpu: &CudaBackend, rng: &mut Rng, case: Case, engines: &[Engine]) {
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

pub(crate) const LAYOUTS: [GemmLayout; 3] = [GemmLayout::NN, GemmLayout::NT, GemmLayout::TN];
