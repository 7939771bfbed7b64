//! The decode-batch GEMM (kernels/gemm_skinny.cu, `gemm_bf16_skinny`) against an f64 reference
//! computed on the CPU from the same bf16-rounded inputs: m ∈ {9, 16, 17, 64, 200, 256} (every
//! tile size, m tails inside a tile and across two), n and k with tails (n not a multiple of
//! the 128-row slab, k not a multiple of the 64-wide step), K split off, forced on and chosen
//! by the planner, bf16 and f32 out, accumulation into both; Llama-2-7B's decode products at
//! batch 64 on a sample of rows. Outputs are poisoned with NaN first, so an unwritten element
//! fails. Bounds (‖out − ref‖/‖ref‖) are tests/cuda_kernels/gemm_support.rs's, measured on the tiled
//! kernels with the same inputs and f32 accumulation: 8e-3 for bf16 outputs (storage rounding,
//! 2⁻⁹ relative per element), 2e-3 for f32 outputs.

use super::gemm_support::{sample_rows, BF16_OUT_BOUND, F32_OUT_BOUND, FULL_CHECK_MACS};
use crate::common::gpu::{gpu, poisoned, rel_err, Dtype, Rng};
use half::bf16;
use implicit::backend::cuda::{
    CudaBackend, DeviceBuffer, GemmLayout, SkinnySplit, GEMV_MAX_ROWS, SKINNY_MAX_ROWS,
};

/// One product's inputs (as uploaded and as the reference sees them) and the rows checked.
struct Product {
    m: usize,
    n: usize,
    k: usize,
    a: DeviceBuffer<bf16>,
    b: DeviceBuffer<bf16>,
    rows: Vec<usize>,
    /// Σ_p A[i,p]·B[j,p] in f64 for i in `rows`: [rows][n].
    want: Vec<f64>,
}

impl Product {
    fn new(gpu: &CudaBackend, rng: &mut Rng, m: usize, n: usize, k: usize) -> Product {
        let (aq, a) = bf16::quantize(&rng.vec(m * k, 1.0));
        let (bq, b) = bf16::quantize(&rng.vec(n * k, 1.0));
        let rows: Vec<usize> = if m * n * k <= FULL_CHECK_MACS {
            (0..m).collect()
        } else {
            sample_rows(m, vec![0, m - 1, m / 2], rng)
        };
        let mut want = vec![0.0f64; rows.len() * n];
        for (ri, &i) in rows.iter().enumerate() {
            let a_row: Vec<f64> = a[i * k..(i + 1) * k].iter().map(|&x| x as f64).collect();
            for (j, w) in want[ri * n..(ri + 1) * n].iter_mut().enumerate() {
                *w = a_row
                    .iter()
                    .zip(&b[j * k..(j + 1) * k])
                    .map(|(&x, &y)| x * y as f64)
                    .sum();
            }
        }
        Product {
            m,
            n,
            k,
            a: gpu.upload(&aq).unwrap(),
            b: gpu.upload(&bq).unwrap(),
            rows,
            want,
        }
    }

    fn run<O: Dtype>(
        &self,
        gpu: &CudaBackend,
        c: &mut DeviceBuffer<O>,
        accumulate: bool,
        split: SkinnySplit,
    ) {
        let (m, n, k) = (self.m, self.n, self.k);
        gpu.gemm_bf16_skinny(m, n, k, &self.a, &self.b, c, accumulate, split)
            .unwrap_or_else(|e| panic!("m {m} n {n} k {k} {split:?}: {e}"));
    }

    /// Every element of `out` ([m, n]) finite, and the checked rows within `bound` of
    /// `c0 + times·A·Bᵀ` (c0 the initial C, or none).
    fn check<O: Dtype>(&self, what: &str, out: &[O], c0: Option<&[f32]>, times: f64, bound: f64) {
        if let Some(i) = out.iter().position(|v| !v.to_f32().is_finite()) {
            panic!("{what}: C[{i}] = {} (not written?)", out[i].to_f32());
        }
        let n = self.n;
        let mut got = Vec::with_capacity(self.want.len());
        let mut want = Vec::with_capacity(self.want.len());
        for (ri, &i) in self.rows.iter().enumerate() {
            got.extend_from_slice(&out[i * n..(i + 1) * n]);
            for j in 0..n {
                let base = c0.map_or(0.0, |c| c[i * n + j] as f64);
                want.push(base + times * self.want[ri * n + j]);
            }
        }
        let e = rel_err(&got, &want);
        eprintln!(
            "{what}: rel err {e:.2e} (bound {bound:.0e}, {} of {} rows)",
            self.rows.len(),
            self.m
        );
        assert!(e <= bound, "{what}: rel err {e:.3e} > {bound:.0e}");
    }

    /// bf16 out, f32 out, f32 accumulated twice, bf16 accumulated, with `split`.
    fn check_all_outputs(&self, gpu: &CudaBackend, rng: &mut Rng, split: SkinnySplit) {
        let (m, n, k) = (self.m, self.n, self.k);
        let plan = gpu.skinny_plan(m, n, k, split).unwrap();
        let tag = format!(
            "skinny {m}x{n}x{k} {split:?} (m_tile {}, {} blocks × {} splits)",
            plan.m_tile, plan.tiles, plan.splits
        );

        let mut c = poisoned::<bf16>(gpu, m * n);
        self.run(gpu, &mut c, false, split);
        let out = gpu.download(&c).unwrap();
        self.check(&format!("{tag} bf16 out"), &out, None, 1.0, BF16_OUT_BOUND);

        let mut c = poisoned::<f32>(gpu, m * n);
        self.run(gpu, &mut c, false, split);
        let out = gpu.download(&c).unwrap();
        self.check(&format!("{tag} f32 out"), &out, None, 1.0, F32_OUT_BOUND);

        // The accumulators start at values of about the product's size.
        let scale = (k as f32).sqrt().max(1.0) * 0.5;
        let c0 = rng.vec(m * n, scale);
        let mut c = gpu.upload(&c0).unwrap();
        self.run(gpu, &mut c, true, split);
        self.run(gpu, &mut c, true, split);
        let out = gpu.download(&c).unwrap();
        self.check(
            &format!("{tag} f32 accumulate ×2"),
            &out,
            Some(&c0),
            2.0,
            F32_OUT_BOUND,
        );

        let (c0q, c0) = bf16::quantize(&rng.vec(m * n, scale));
        let mut c = gpu.upload(&c0q).unwrap();
        self.run(gpu, &mut c, true, split);
        let out = gpu.download(&c).unwrap();
        self.check(
            &format!("{tag} bf16 accumulate"),
            &out,
            Some(&c0),
            1.0,
            BF16_OUT_BOUND,
        );
    }
}

/// Every tile size and its tails, with K whole and split (3 splits forced, and the planner's).
#[test]
fn skinny_gemm_matches_f64() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("gemm_skinny");
    assert_eq!(GEMV_MAX_ROWS, 8);
    assert_eq!(SKINNY_MAX_ROWS, 256);
    // n = 300: two full slabs and a 44-row tail; k = 520 = 8 steps of 64 and 8 more; k = 8:
    // one partial step; n = 4099, k = 1032: 33 slabs, few enough that the planner splits.
    for m in [9, 16, 17, 64, 200, 256] {
        for (n, k) in [(300, 520), (130, 8), (4099, 1032)] {
            let p = Product::new(gpu, &mut rng, m, n, k);
            for split in [
                SkinnySplit::Fixed(1),
                SkinnySplit::Fixed(3),
                SkinnySplit::Auto,
            ] {
                p.check_all_outputs(gpu, &mut rng, split);
            }
        }
    }
}

/// The split really happens where the tests force or expect it, and the planner splits the
/// decode products that would otherwise leave SMs idle.
#[test]
fn skinny_gemm_splits_k_when_the_slabs_are_few() {
    let Some(gpu) = gpu() else { return };
    let plan = |m, n, k, s| gpu.skinny_plan(m, n, k, s).unwrap();
    assert_eq!(plan(64, 300, 520, SkinnySplit::Fixed(3)).splits, 3);
    assert_eq!(plan(64, 300, 520, SkinnySplit::Fixed(1)).splits, 1);
    // A k = 8 product has one step: nothing to split.
    assert_eq!(plan(64, 130, 8, SkinnySplit::Fixed(3)).splits, 1);
    let decode = plan(64, 4096, 4096, SkinnySplit::Auto);
    eprintln!("m 64 n 4096 k 4096: {decode:?}");
    assert!(decode.splits > 1, "{decode:?}");
}

/// Split or not, the same inputs give the same bits on every run (the last block of a slab sums
/// the partials in split order, whichever arrives last).
#[test]
fn skinny_gemm_is_deterministic() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("gemm_skinny_bits");
    let p = Product::new(gpu, &mut rng, 64, 4096, 4096);
    for split in [SkinnySplit::Fixed(1), SkinnySplit::Fixed(8)] {
        let mut first: Option<Vec<u32>> = None;
        for _ in 0..5 {
            let mut c = poisoned::<f32>(gpu, 64 * 4096);
            p.run(gpu, &mut c, false, split);
            let bits: Vec<u32> = gpu
                .download(&c)
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            match &first {
                None => first = Some(bits),
                Some(f) => assert!(*f == bits, "{split:?}: two runs differ"),
            }
        }
    }
}

/// `gemm_bf16` sends NT products of 9..=256 rows here (bit for bit what the skinny kernel
/// gives), and keeps 8 rows on the GEMV and 257 on the large-tile GEMM.
#[test]
fn gemm_bf16_dispatches_decode_batches_to_the_skinny_kernel() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("gemm_skinny_dispatch");
    for (m, skinny) in [(8, false), (9, true), (64, true), (256, true), (257, false)] {
        // k = 4104: a long sum, so that two kernels' summation orders differ somewhere.
        let (n, k) = (520, 4104);
        let (aq, _) = bf16::quantize(&rng.vec(m * k, 1.0));
        let (bq, _) = bf16::quantize(&rng.vec(n * k, 1.0));
        let (a, b) = (gpu.upload(&aq).unwrap(), gpu.upload(&bq).unwrap());
        let mut via_dispatch = poisoned::<f32>(gpu, m * n);
        gpu.gemm_bf16(GemmLayout::NT, m, n, k, 1, &a, &b, &mut via_dispatch, false)
            .unwrap();
        let dispatch = gpu.download(&via_dispatch).unwrap();
        let supported = gpu.skinny_supports(GemmLayout::NT, m, n, k, 1, &a, &b);
        assert_eq!(supported.is_ok(), skinny, "m {m}: {supported:?}");
        if skinny {
            let mut direct = poisoned::<f32>(gpu, m * n);
            gpu.gemm_bf16_skinny(m, n, k, &a, &b, &mut direct, false, SkinnySplit::Auto)
                .unwrap();
            let direct = gpu.download(&direct).unwrap();
            let same = dispatch
                .iter()
                .zip(&direct)
                .all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "m {m}: gemm_bf16 did not run the skinny kernel");
        }
    }
}

/// Llama-2-7B's decode products at batch 64 (q/k/v/o, gate/up, down, the LM head), f32 out
/// with the planner's split, on a sample of rows.
#[test]
fn skinny_gemm_matches_f64_on_decode_shapes() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("gemm_skinny_model");
    for (n, k) in [(4096, 4096), (11008, 4096), (4096, 11008), (32000, 4096)] {
        let p = Product::new(gpu, &mut rng, 64, n, k);
        let mut c = poisoned::<f32>(gpu, 64 * n);
        p.run(gpu, &mut c, false, SkinnySplit::Auto);
        let out = gpu.download(&c).unwrap();
        let plan = gpu.skinny_plan(64, n, k, SkinnySplit::Auto).unwrap();
        p.check(
            &format!("skinny 64x{n}x{k} {plan:?} f32 out"),
            &out,
            None,
            1.0,
            F32_OUT_BOUND,
        );
    }
}

/// What the kernel cannot take is an error naming the shape, not a wrong answer.
#[test]
fn skinny_gemm_rejects_what_it_cannot_take() {
    let Some(gpu) = gpu() else { return };
    let a = gpu.upload(&vec![bf16::ONE; 16 * 12]).unwrap();
    let b = gpu.upload(&[bf16::ONE; 8 * 12]).unwrap();
    let mut c = poisoned::<f32>(gpu, 16 * 8);
    // k = 12: rows of 24 bytes, not whole 16-byte chunks.
    let e = gpu
        .gemm_bf16_skinny(16, 8, 12, &a, &b, &mut c, false, SkinnySplit::Auto)
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiple of 8"), "{e}");
    let a = gpu.upload(&vec![bf16::ONE; 16 * 16]).unwrap();
    let b = gpu.upload(&vec![bf16::ONE; 8 * 16]).unwrap();
    let e = gpu
        .gemm_bf16_skinny(16, 8, 15, &a, &b, &mut c, false, SkinnySplit::Auto)
        .unwrap_err()
        .to_string();
    assert!(e.contains("elements"), "{e}");
    let a8 = gpu.upload(&vec![bf16::ONE; 8 * 16]).unwrap();
    let mut c8 = poisoned::<f32>(gpu, 8 * 8);
    let e = gpu
        .gemm_bf16_skinny(8, 8, 16, &a8, &b, &mut c8, false, SkinnySplit::Auto)
        .unwrap_err()
        .to_string();
    assert!(e.contains("m must be in 9..=256"), "{e}");
    // And through the dispatch, the 12-wide k goes to kernels/gemm.cu: all 16·8 sums of 12.
    let a = gpu.upload(&vec![bf16::ONE; 16 * 12]).unwrap();
    let b = gpu.upload(&[bf16::ONE; 8 * 12]).unwrap();
    gpu.gemm_bf16(GemmLayout::NT, 16, 8, 12, 1, &a, &b, &mut c, false)
        .unwrap();
    assert_eq!(gpu.download(&c).unwrap(), vec![12.0f32; 16 * 8]);
}
