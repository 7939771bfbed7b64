//! The norm backwards delivering dx into the residual stream's gradient (`NormGradOut`:
//! dx += result, and the new dx rounded to bf16), as the trainer's layer backward calls them,
//! against the CPU references `backend::cpu::backward::{rms_norm_backward,
//! layer_norm_backward}` plus the add in f64. Fresh random inputs; the bf16 copy is poisoned
//! with NaN first. Bounds: the f32 one for dx and dw (the kernels' measured f32 bound, as in
//! `rms_norm_and_layer_norm_match_cpu`), and for the bf16 copy the bf16 one (one rounding of
//! an f32 value, 2⁻⁹ relative at most, under 8e-3).

use crate::common::gpu::{check, f64s, gpu, poisoned, Rng, BF16_BOUND, F32_BOUND};
use half::bf16;
use implicit::backend::cpu::backward;
use implicit::backend::cuda::{CudaBackend, NormGradOut};

fn residual_case(gpu: &CudaBackend, rng: &mut Rng, rows: usize, d: usize, rms: bool) {
    let tag = format!("{} rows {rows} d {d}", if rms { "rms" } else { "layer" });
    let x = rng.vec(rows * d, 2.0);
    let w = rng.vec(d, 1.5);
    let dy = rng.vec(rows * d, 1.0);
    let residual = rng.vec(rows * d, 3.0);
    let (xs, ws, dys) = (f64s(&x), f64s(&w), f64s(&dy));
    let eps = 1e-5;
    let (mut dx_ref, mut dw_ref) = (vec![0.0f64; rows * d], vec![0.0f64; d]);
    if rms {
        backward::rms_norm_backward(&xs, &ws, eps, &dys, &mut dx_ref, &mut dw_ref);
    } else {
        backward::layer_norm_backward(&xs, d, eps, &dys, &mut dx_ref);
    }
    let want: Vec<f64> = dx_ref
        .iter()
        .zip(&residual)
        .map(|(a, &b)| a + b as f64)
        .collect();
    let (gx, gw, gdy) = (
        gpu.upload(&x).unwrap(),
        gpu.upload(&w).unwrap(),
        gpu.upload(&dy).unwrap(),
    );
    let mut gdx = gpu.upload(&residual).unwrap();
    let mut copy = poisoned::<bf16>(gpu, rows * d);
    // dw accumulates: start it at 1 and expect 1 + dw.
    let mut gdw = gpu.upload(&vec![1.0f32; d]).unwrap();
    let out = NormGradOut {
        dx: &mut gdx,
        accumulate: true,
        dx_bf16: Some(&mut copy),
    };
    if rms {
        gpu.rms_norm_backward_to(&gx, &gw, eps, &gdy, out, &mut gdw, true)
            .unwrap();
    } else {
        gpu.layer_norm_backward_to(&gx, d, eps, &gdy, out).unwrap();
    }
    let dx_gpu = gpu.download(&gdx).unwrap();
    check(&format!("{tag} dx += "), &dx_gpu, &want, F32_BOUND);
    check(
        &format!("{tag} bf16(dx)"),
        &gpu.download(&copy).unwrap(),
        &want,
        BF16_BOUND,
    );
    // The copy is exactly the f32 result rounded once to nearest even.
    let copy_host = gpu.download(&copy).unwrap();
    assert!(
        dx_gpu
            .iter()
            .zip(&copy_host)
            .all(|(&a, &b)| bf16::from_f32(a).to_bits() == b.to_bits()),
        "{tag}: the bf16 copy is not the f32 dx rounded to nearest even"
    );
    if rms {
        let dw_want: Vec<f64> = dw_ref.iter().map(|v| 1.0 + v).collect();
        check(
            &format!("{tag} dw"),
            &gpu.download(&gdw).unwrap(),
            &dw_want,
            F32_BOUND,
        );
    }
}

#[test]
fn norm_backward_adds_into_the_residual_gradient_and_rounds_a_copy() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("norm_residual");
    // d 4096 the paper's (16-byte path), 998 and 30 scalar, 8192 the widest fused RMSNorm.
    for (rows, d) in [(2048, 4096), (7, 998), (300, 30), (3, 8192)] {
        residual_case(gpu, &mut rng, rows, d, true);
        residual_case(gpu, &mut rng, rows, d, false);
    }
}

#[test]
fn rms_norm_backward_into_the_residual_refuses_rows_it_cannot_fuse() {
    let Some(gpu) = gpu() else { return };
    let d = 8200;
    let x = gpu.upload(&vec![1.0f32; d]).unwrap();
    let w = gpu.upload(&vec![1.0f32; d]).unwrap();
    let mut dx = gpu.upload(&vec![0.0f32; d]).unwrap();
    let mut dw = gpu.upload(&vec![0.0f32; d]).unwrap();
    let out = NormGradOut {
        dx: &mut dx,
        accumulate: true,
        dx_bf16: None,
    };
    let err = gpu
        .rms_norm_backward_to(&x, &w, 1e-5, &x, out, &mut dw, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("d 8200"), "{err}");
}
