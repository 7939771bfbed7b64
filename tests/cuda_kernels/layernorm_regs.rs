//! The rows-in-registers LayerNorm backward (kernels/layernorm.cu `layernorm_bwd_regs_*`, d ≤
//! 8192) against the CPU reference `backend::cpu::backward::layer_norm_backward`, on fresh random
//! inputs with dx poisoned (NaN) first: every instantiation (f32 v1/v2/v4/v8, bf16 v1/v2/v4),
//! on the 16-byte path and the scalar one (d not a multiple of the vector), row counts that
//! leave the last block's rows partly dead, and widths where some threads own no column. Then
//! determinism (two runs, same bits) and the fused residual form (`NormGradOut`: dx += result,
//! plus a bf16 copy) against the unfused result plus the residual.
//!
//! Bounds: dx against the CPU, the kernels' storage bounds (f32 1e-5, bf16 8e-3), as
//! `rms_norm_and_layer_norm_match_cpu` holds the one-row-a-block kernel to. Fused against
//! unfused in f32: the same dx, then one f32 addition (which the compiler may fuse with the
//! last product, one rounding instead of two), so they differ by at most one f32 rounding of
//! each element, 2⁻²⁴ of max(|dx|, |dx + residual|): 1e-6 norm-wise leaves a factor of ~5 for
//! the residual's scale (3) over dx's (~1).

use crate::common::gpu::{check, f64s, gpu, poisoned, Dtype, Rng, BF16_BOUND};
use half::bf16;
use implicit::backend::cpu::backward;
use implicit::backend::cuda::{CudaBackend, NormGradOut};

const EPS: f64 = 1e-5;

fn plain<T: Dtype>(gpu: &CudaBackend, rng: &mut Rng, rows: usize, d: usize) {
    let tag = format!("{} rows {rows} d {d}", std::any::type_name::<T>());
    let (xq, x) = T::quantize(&rng.vec(rows * d, 2.0));
    let (dyq, dy) = T::quantize(&rng.vec(rows * d, 1.0));
    let mut want = vec![0.0f64; rows * d];
    backward::layer_norm_backward(&f64s(&x), d, EPS, &f64s(&dy), &mut want);
    let (gx, gdy) = (gpu.upload(&xq).unwrap(), gpu.upload(&dyq).unwrap());
    let mut gdx = poisoned::<T>(gpu, rows * d);
    gpu.layer_norm_backward(&gx, d, EPS, &gdy, &mut gdx)
        .unwrap();
    let first = gpu.download(&gdx).unwrap();
    check(&format!("layer_norm dx {tag}"), &first, &want, T::BOUND);
    let mut again = poisoned::<T>(gpu, rows * d);
    gpu.layer_norm_backward(&gx, d, EPS, &gdy, &mut again)
        .unwrap();
    let again = gpu.download(&again).unwrap();
    assert!(
        first
            .iter()
            .zip(&again)
            .all(|(a, b)| a.to_f32().to_bits() == b.to_f32().to_bits()),
        "layer_norm dx {tag}: two runs on the same inputs differ"
    );
}

#[test]
fn layer_norm_backward_rows_in_registers_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("layernorm_regs");
    // f32 (4 a vector): v1 ≤ 1024, v2 ≤ 2048, v4 ≤ 4096, v8 ≤ 8192; R = 4, 4, 2, 1 rows a block.
    // 1028: 257 vectors over 256 threads (v2: one thread owns two, the rest one and a column
    // past d); 1030 and 8190: the scalar path; 4096 the paper's; 8192 the widest.
    for (rows, d) in [
        (1, 4),
        (5, 256),
        (7, 1028),
        (6, 1030),
        (3, 4096),
        (513, 4096),
        (2, 8190),
        (3, 8192),
    ] {
        plain::<f32>(gpu, &mut rng, rows, d);
    }
    // bf16 (8 a vector): v1 ≤ 2048, v2 ≤ 4096, v4 ≤ 8192; R = 4, 2, 1.
    for (rows, d) in [
        (1, 8),
        (7, 2056),
        (3, 2050),
        (5, 4096),
        (513, 4096),
        (2, 8188),
        (3, 8192),
    ] {
        plain::<bf16>(gpu, &mut rng, rows, d);
    }
}

/// The trainer's form (f32): `NormGradOut` with accumulate and the bf16 copy, against the
/// plain backward's dx plus the residual; and the same bits on a second run.
fn fused(gpu: &CudaBackend, rng: &mut Rng, rows: usize, d: usize) {
    let tag = format!("rows {rows} d {d}");
    let x = rng.vec(rows * d, 2.0);
    let dy = rng.vec(rows * d, 1.0);
    let residual = rng.vec(rows * d, 3.0);
    let (gx, gdy) = (gpu.upload(&x).unwrap(), gpu.upload(&dy).unwrap());
    let mut gplain = poisoned::<f32>(gpu, rows * d);
    gpu.layer_norm_backward(&gx, d, EPS, &gdy, &mut gplain)
        .unwrap();
    let unfused: Vec<f64> = gpu
        .download(&gplain)
        .unwrap()
        .iter()
        .zip(&residual)
        .map(|(&a, &b)| a as f64 + b as f64)
        .collect();
    let run = || {
        let mut gdx = gpu.upload(&residual).unwrap();
        let mut copy = poisoned::<bf16>(gpu, rows * d);
        let out = NormGradOut {
            dx: &mut gdx,
            accumulate: true,
            dx_bf16: Some(&mut copy),
        };
        gpu.layer_norm_backward_to(&gx, d, EPS, &gdy, out).unwrap();
        (gpu.download(&gdx).unwrap(), gpu.download(&copy).unwrap())
    };
    let (dx, copy) = run();
    check(&format!("fused dx {tag}"), &dx, &unfused, 1e-6);
    check(
        &format!("fused bf16(dx) {tag}"),
        &copy,
        &unfused,
        BF16_BOUND,
    );
    assert!(
        dx.iter()
            .zip(&copy)
            .all(|(&a, &b)| bf16::from_f32(a).to_bits() == b.to_bits()),
        "{tag}: the bf16 copy is not the f32 dx rounded to nearest even"
    );
    let (dx2, copy2) = run();
    assert!(
        dx.iter().zip(&dx2).all(|(a, b)| a.to_bits() == b.to_bits())
            && copy
                .iter()
                .zip(&copy2)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
        "fused {tag}: two runs on the same inputs differ"
    );
}

#[test]
fn layer_norm_backward_into_the_residual_matches_the_unfused_sum() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("layernorm_regs_fused");
    // OLMo-7B's d 4096 (v4, 2 rows a block, an odd row count); 1030 the scalar path; 9000
    // the one-row-a-block kernel past 8192.
    for (rows, d) in [(2047, 4096), (5, 1030), (3, 9000)] {
        fused(gpu, &mut rng, rows, d);
    }
}
