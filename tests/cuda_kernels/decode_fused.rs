//! The decode path's kernels over fused products (kernels/decode.cu through
//! src/backend/cuda/decode/fused.rs) and the skinny product (kernels/gemv.cu) at the fused
//! widths, against f64 references on the CPU from the same bf16-rounded inputs, outputs
//! poisoned with NaN first.
//!
//! Bounds (‖out − ref‖/‖ref‖): bf16 outputs 8e-3, the bound of the rope, swiglu and GEMM tests
//! (one bf16 rounding is ≤ 2^-9 relative, ~1.1e-3 in the norm for uniform rounding errors);
//! f32 outputs of the products 2e-3, tests/cuda_kernels/gemm_support.rs's (f32 sums over k ≤ 11008
//! of bf16 products: ~√k·2^-24 ≈ 6e-6 expected). Copies (v into the cache) are bit-exact, and
//! the fused SwiGLU is bit-identical to kernels/swiglu.cu on the separated halves (the same f32
//! arithmetic).

use super::gemm_support::{BF16_OUT_BOUND, F32_OUT_BOUND};
use crate::common::gpu::{bits, check, f64s, gpu, poisoned, Dtype, Rng};
use half::bf16;
use implicit::backend::cpu::ops::{self, RopeLayout, RopeSpec};
use implicit::backend::cuda::{
    CudaBackend, CudaKvCache, GemmLayout, KvBatch, KvCacheShape, QkvOutputs,
};

/// The model's shapes for one case of [`qkv_case`].
#[derive(Clone, Copy, Debug)]
struct Heads {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    layout: RopeLayout,
}

/// Several forward steps (`steps[i][s]` new tokens of sequence s in step i) through
/// `qkv_rope_append` on random fused rows, on two layers: q (and the contiguous k, v when
/// `contiguous`) after every launch, and every cache's whole contents at the end.
fn qkv_case(gpu: &CudaBackend, rng: &mut Rng, shape: Heads, steps: &[&[usize]], contiguous: bool) {
    let Heads {
        heads,
        kv_heads,
        head_dim: hd,
        layout,
    } = shape;
    let tag = format!("{shape:?} steps {steps:?} contiguous k/v {contiguous}");
    let layers = 2;
    let (q_dim, kv_dim) = (heads * hd, kv_heads * hd);
    let width = q_dim + 2 * kv_dim;
    let spec = |h: usize| RopeSpec {
        heads: h,
        head_dim: hd,
        base: 10000.0,
        layout,
    };
    let sequences = steps[0].len();
    let mut caches: Vec<CudaKvCache> = (0..sequences)
        .map(|_| {
            CudaKvCache::new(KvCacheShape {
                layers,
                kv_dim,
                max_positions: 4096,
            })
        })
        .collect();
    // Per sequence and layer: the keys (f64, rotated) and values (bf16) it should hold.
    let mut want_k = vec![vec![Vec::<f64>::new(); layers]; sequences];
    let mut want_v = vec![vec![Vec::<bf16>::new(); layers]; sequences];
    for new in steps {
        let rows: usize = new.iter().sum();
        let mut positions = Vec::with_capacity(rows);
        let mut seq_of_row = Vec::with_capacity(rows);
        for (s, &n) in new.iter().enumerate() {
            positions.extend(caches[s].len()..caches[s].len() + n);
            seq_of_row.extend(std::iter::repeat_n(s, n));
        }
        let batch = KvBatch::new(gpu, caches.iter_mut().collect(), new).unwrap();
        for layer in 0..layers {
            let (xq, x) = bf16::quantize(&rng.vec(rows * width, 1.0));
            let gx = gpu.upload(&xq).unwrap();
            let mut gq = poisoned::<bf16>(gpu, rows * q_dim);
            let mut gk = poisoned::<bf16>(gpu, rows * kv_dim);
            let mut gv = poisoned::<bf16>(gpu, rows * kv_dim);
            let out = QkvOutputs {
                q: &mut gq,
                kv: contiguous.then_some((&mut gk, &mut gv)),
            };
            gpu.qkv_rope_append(&batch, layer, &gx, heads, spec(heads), out)
                .unwrap();
            let (mut q_ref, mut k_ref, mut v_in) = (Vec::new(), Vec::new(), Vec::new());
            for r in 0..rows {
                let row = &x[r * width..][..width];
                q_ref.extend(f64s(&row[..q_dim]));
                k_ref.extend(f64s(&row[q_dim..q_dim + kv_dim]));
                v_in.extend_from_slice(&xq[r * width + q_dim + kv_dim..][..kv_dim]);
            }
            ops::rope(&mut q_ref, &positions, spec(heads), false);
            ops::rope(&mut k_ref, &positions, spec(kv_heads), false);
            let what = format!("qkv_rope_append {tag} layer {layer}");
            check(
                &format!("{what}: q"),
                &gpu.download(&gq).unwrap(),
                &q_ref,
                BF16_OUT_BOUND,
            );
            if contiguous {
                check(
                    &format!("{what}: contiguous k"),
                    &gpu.download(&gk).unwrap(),
                    &k_ref,
                    BF16_OUT_BOUND,
                );
                assert_eq!(
                    bits(&gpu.download(&gv).unwrap()),
                    bits(&v_in),
                    "{what}: contiguous v is a copy: bit-exact"
                );
            }
            for (r, &s) in seq_of_row.iter().enumerate() {
                want_k[s][layer].extend_from_slice(&k_ref[r * kv_dim..][..kv_dim]);
                want_v[s][layer].extend_from_slice(&v_in[r * kv_dim..][..kv_dim]);
            }
        }
        batch.finish();
    }
    for (s, cache) in caches.iter().enumerate() {
        for layer in 0..layers {
            let (k, v) = cache.download_layer(gpu, layer).unwrap();
            check(
                &format!("qkv_rope_append {tag}: cache of sequence {s} layer {layer}: k"),
                &k,
                &want_k[s][layer],
                BF16_OUT_BOUND,
            );
            assert_eq!(
                bits(&v),
                bits(&want_v[s][layer]),
                "qkv_rope_append {tag}: cache of sequence {s} layer {layer}: v is a copy"
            );
        }
    }
}

/// RoPE on q and k and the KV append from the fused q|k|v rows: Llama-2-7B's heads (the
/// 16-byte path), grouped-query heads of 64, and head_dim 24 (12 pairs: the scalar path), in
/// both RoPE layouts; ragged steps from empty caches and onto filled ones (positions up to
/// ~340, several turns of the angle reduction), with and without the contiguous k, v.
#[test]
fn qkv_rope_append_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("qkv_rope_append");
    for layout in [RopeLayout::HalfRotation, RopeLayout::Interleaved] {
        let cases = [
            (32, 32, 128, true),
            (8, 2, 64, false),
            (6, 3, 24, true),
            (4, 4, 24, false),
        ];
        for (heads, kv_heads, head_dim, contiguous) in cases {
            let shape = Heads {
                heads,
                kv_heads,
                head_dim,
                layout,
            };
            let steps: [&[usize]; 3] = [&[300, 1, 37], &[1, 1, 1], &[2, 5, 1]];
            qkv_case(gpu, &mut rng, shape, &steps, contiguous);
        }
    }
}

#[test]
fn qkv_rope_append_rejects_wrong_shapes() {
    let Some(gpu) = gpu() else { return };
    let mut cache = CudaKvCache::new(KvCacheShape {
        layers: 1,
        kv_dim: 16,
        max_positions: 64,
    });
    let batch = KvBatch::new(gpu, vec![&mut cache], &[2]).unwrap();
    let spec = RopeSpec {
        heads: 2,
        head_dim: 8,
        base: 10000.0,
        layout: RopeLayout::HalfRotation,
    };
    // Two rows of (2 + 2·2)·8 = 48 values are needed; 47 are given.
    let short = gpu.zeros::<bf16>(2 * 48 - 1).unwrap();
    let mut q = gpu.zeros::<bf16>(2 * 16).unwrap();
    let out = QkvOutputs {
        q: &mut q,
        kv: None,
    };
    let e = gpu
        .qkv_rope_append(&batch, 0, &short, 2, spec, out)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model_qkv_rope_append") && e.contains("qkv"),
        "{e}"
    );
    let fused = gpu.zeros::<bf16>(2 * 48).unwrap();
    let out = QkvOutputs {
        q: &mut q,
        kv: None,
    };
    let e = gpu
        .qkv_rope_append(&batch, 1, &fused, 2, spec, out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer 1 of 1"), "{e}");
    batch.finish();
}

/// SwiGLU over the fused gate|up rows: against f64, and bit for bit against
/// kernels/swiglu.cu on the two halves copied apart. ffn 11008 (Llama-2-7B, the 16-byte path)
/// at 1 and 64 rows, ffn 13 and 4 (the scalar path).
#[test]
fn swiglu_fused_matches_cpu_and_the_unfused_kernel() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("swiglu_fused");
    for (rows, ffn) in [(1, 11008), (64, 11008), (5, 13), (3, 4), (2, 8)] {
        let tag = format!("rows {rows} ffn {ffn}");
        let gate = rng.vec(rows * ffn, 4.0);
        let up = rng.vec(rows * ffn, 2.0);
        let mut fused = Vec::with_capacity(rows * 2 * ffn);
        for r in 0..rows {
            fused.extend_from_slice(&gate[r * ffn..][..ffn]);
            fused.extend_from_slice(&up[r * ffn..][..ffn]);
        }
        let (fq, f) = bf16::quantize(&fused);
        let mut want = vec![0.0f64; rows * ffn];
        for r in 0..rows {
            let row = f64s(&f[r * 2 * ffn..][..2 * ffn]);
            ops::swiglu(&row[..ffn], &row[ffn..], &mut want[r * ffn..][..ffn]);
        }
        let mut act = poisoned::<bf16>(gpu, rows * ffn);
        gpu.swiglu_fused(&gpu.upload(&fq).unwrap(), ffn, &mut act)
            .unwrap();
        let got = gpu.download(&act).unwrap();
        check(&format!("swiglu_fused {tag}"), &got, &want, BF16_OUT_BOUND);

        let (gq, uq): (Vec<bf16>, Vec<bf16>) = {
            let mut g = Vec::with_capacity(rows * ffn);
            let mut u = Vec::with_capacity(rows * ffn);
            for r in 0..rows {
                g.extend_from_slice(&fq[r * 2 * ffn..][..ffn]);
                u.extend_from_slice(&fq[r * 2 * ffn + ffn..][..ffn]);
            }
            (g, u)
        };
        let mut apart = poisoned::<bf16>(gpu, rows * ffn);
        gpu.swiglu(
            &gpu.upload(&gq).unwrap(),
            &gpu.upload(&uq).unwrap(),
            &mut apart,
        )
        .unwrap();
        assert_eq!(
            bits(&got),
            bits(&gpu.download(&apart).unwrap()),
            "swiglu_fused {tag}: differs from swiglu_fwd_bf16 on the same values"
        );
    }
    let gu = gpu.zeros::<bf16>(2 * 2 * 8 + 1).unwrap();
    let mut act = gpu.zeros::<bf16>(2 * 8).unwrap();
    let e = gpu.swiglu_fused(&gu, 8, &mut act).unwrap_err().to_string();
    assert!(
        e.contains("model_swiglu_fused_bf16") && e.contains("33"),
        "{e}"
    );
}

/// f64 C = A·Bᵀ (`a` `[m, k]`, `b` `[n, k]`).
fn product(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut c = vec![0.0f64; m * n];
    for i in 0..m {
        let ar = &a[i * k..][..k];
        for j in 0..n {
            let br = &b[j * k..][..k];
            c[i * n + j] = ar.iter().zip(br).map(|(&x, &y)| x as f64 * y as f64).sum();
        }
    }
    c
}

/// kernels/gemv.cu (through `gemm_bf16`, which sends NT products of at most 8 rows there) at
/// the widths the fused weights give and at k with whole groups of loads and a partial last one
/// (k 11008: 10 groups of 1024 values and 768 more; k 1032: one group and one 16-byte chunk),
/// n odd (a warp's second column past the end): bf16 out, and f32 accumulated onto random C.
/// Each row's result is bit-identical whatever the row count (variants r1, r4, r8) and from run
/// to run.
#[test]
fn gemv_matches_f64_at_fused_widths() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("gemv_fused_widths");
    for (n, k) in [(33, 1032), (4097, 11008), (12288, 4096)] {
        let (bq, b) = bf16::quantize(&rng.vec(n * k, 1.0));
        let gb = gpu.upload(&bq).unwrap();
        let (aq, a) = bf16::quantize(&rng.vec(8 * k, 1.0));
        let mut first_row: Option<Vec<u32>> = None;
        for m in [1, 3, 8] {
            let tag = format!("gemv m {m} n {n} k {k}");
            let ga = gpu.upload(&aq[..m * k]).unwrap();
            let want = product(&a[..m * k], &b, m, n, k);
            let mut c = poisoned::<bf16>(gpu, m * n);
            gpu.gemm_bf16(GemmLayout::NT, m, n, k, 1, &ga, &gb, &mut c, false)
                .unwrap();
            let got = gpu.download(&c).unwrap();
            check(&format!("{tag} bf16 out"), &got, &want, BF16_OUT_BOUND);
            let row0 = bits(&got[..n]);
            match &first_row {
                None => first_row = Some(row0),
                Some(r) => assert!(*r == row0, "{tag}: row 0 differs from the m = 1 launch"),
            }
            gpu.gemm_bf16(GemmLayout::NT, m, n, k, 1, &ga, &gb, &mut c, false)
                .unwrap();
            assert!(
                bits(&gpu.download(&c).unwrap()) == bits(&got),
                "{tag}: two runs differ"
            );

            let c0 = rng.vec(m * n, 3.0);
            let mut gc = gpu.upload(&c0).unwrap();
            gpu.gemm_bf16(GemmLayout::NT, m, n, k, 1, &ga, &gb, &mut gc, true)
                .unwrap();
            let want: Vec<f64> = want.iter().zip(&c0).map(|(w, &c)| w + c as f64).collect();
            check(
                &format!("{tag} f32 accumulated"),
                &gpu.download(&gc).unwrap(),
                &want,
                F32_OUT_BOUND,
            );
        }
    }
}
