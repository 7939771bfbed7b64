//! The rows-in-registers RMSNorm backward (kernels/norm.cu `rmsnorm_bwd_regs_*`, d ≤ 8192)
//! against the CPU reference `backend::cpu::backward::rms_norm_backward`, on fresh random
//! inputs with dx and dw poisoned (NaN) first: every instantiation (f32 v1/v2/v4/v8, bf16
//! v1/v2/v4), each on the unbranched 16-byte path and on the scalar one (d not a multiple of
//! the vector), with row counts whose blocks end in dead rows (rows_per_block = ⌈rows/256⌉ not a
//! multiple of the kernel's R) and widths where some threads own no column. Then determinism
//! (dx and dw, two runs, same bits), and the fused residual form (`NormGradOut`: dx += result,
//! plus a bf16 copy for f32) on every instantiation's 16-byte path, where the old dx is read by
//! the row's loads issued together.
//!
//! Bounds: the kernels' storage bounds (f32 1e-5, bf16 8e-3) for dx and F32_BOUND for dw, as
//! `rms_norm_and_layer_norm_match_cpu` holds the same kernels to; the fused dx against the CPU
//! dx plus the residual with the same storage bound (one more rounding of a sum, as
//! norm_residual.rs measures it).

use crate::common::gpu::{check, f64s, gpu, poisoned, Dtype, Rng, BF16_BOUND, F32_BOUND};
use half::bf16;
use implicit::backend::cpu::backward;
use implicit::backend::cuda::{CudaBackend, NormGradOut};

const EPS: f64 = 1e-5;

fn bits<T: Dtype>(v: &[T]) -> Vec<u32> {
    v.iter().map(|a| a.to_f32().to_bits()).collect()
}

fn case<T: Dtype>(gpu: &CudaBackend, rng: &mut Rng, rows: usize, d: usize) {
    let tag = format!("{} rows {rows} d {d}", std::any::type_name::<T>());
    let (xq, x) = T::quantize(&rng.vec(rows * d, 2.0));
    let (wq, w) = T::quantize(&rng.vec(d, 1.5));
    let (dyq, dy) = T::quantize(&rng.vec(rows * d, 1.0));
    let (mut dx_ref, mut dw_ref) = (vec![0.0f64; rows * d], vec![0.0f64; d]);
    backward::rms_norm_backward(
        &f64s(&x),
        &f64s(&w),
        EPS,
        &f64s(&dy),
        &mut dx_ref,
        &mut dw_ref,
    );
    let (gx, gw, gdy) = (
        gpu.upload(&xq).unwrap(),
        gpu.upload(&wq).unwrap(),
        gpu.upload(&dyq).unwrap(),
    );
    let run = || {
        let mut gdx = poisoned::<T>(gpu, rows * d);
        let mut gdw = gpu.upload(&vec![f32::NAN; d]).unwrap();
        gpu.rms_norm_backward(&gx, &gw, EPS, &gdy, &mut gdx, &mut gdw, false)
            .unwrap();
        (gpu.download(&gdx).unwrap(), gpu.download(&gdw).unwrap())
    };
    let (dx, dw) = run();
    check(&format!("rms_norm dx {tag}"), &dx, &dx_ref, T::BOUND);
    check(&format!("rms_norm dw {tag}"), &dw, &dw_ref, F32_BOUND);
    let (dx2, dw2) = run();
    assert!(
        bits(&dx) == bits(&dx2) && bits(&dw) == bits(&dw2),
        "rms_norm {tag}: two runs on the same inputs differ"
    );

    // The fused form: dx += result (and for f32 a bf16 copy); dw as in the plain call.
    let (rq, r) = T::quantize(&rng.vec(rows * d, 3.0));
    let want: Vec<f64> = dx_ref.iter().zip(&r).map(|(a, &b)| a + b as f64).collect();
    let mut gdx = gpu.upload(&rq).unwrap();
    let mut copy = poisoned::<bf16>(gpu, rows * d);
    let is_f32 = std::mem::size_of::<T::Raw>() == 4;
    let out = NormGradOut {
        dx: &mut gdx,
        accumulate: true,
        dx_bf16: if is_f32 { Some(&mut copy) } else { None },
    };
    let mut gdw = gpu.upload(&vec![f32::NAN; d]).unwrap();
    gpu.rms_norm_backward_to(&gx, &gw, EPS, &gdy, out, &mut gdw, false)
        .unwrap();
    let fused = gpu.download(&gdx).unwrap();
    check(&format!("fused rms_norm dx {tag}"), &fused, &want, T::BOUND);
    assert_eq!(
        bits(&gpu.download(&gdw).unwrap()),
        bits(&dw),
        "fused rms_norm {tag}: dw differs from the plain call's"
    );
    if is_f32 {
        let copy = gpu.download(&copy).unwrap();
        check(&format!("fused bf16(dx) {tag}"), &copy, &want, BF16_BOUND);
        assert!(
            fused
                .iter()
                .zip(&copy)
                .all(|(a, b)| bf16::from_f32(a.to_f32()).to_bits() == b.to_bits()),
            "{tag}: the bf16 copy is not the f32 dx rounded to nearest even"
        );
    }
}

#[test]
fn rms_norm_backward_rows_in_registers_matches_cpu_on_every_variant() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("rmsnorm_regs");
    // f32 (4 a vector): v1 ≤ 1024, v2 ≤ 2048, v4 ≤ 4096, v8 ≤ 8192 (R = 4, 4, 1, 1 rows at a
    // time). 2100 rows: 9 a block, so v1/v2 end each block on a group with 3 dead rows.
    // 1028: 257 vectors (v2: threads past the first own a vector past d); 2052, 4100 likewise
    // for v4, v8; 1022, 1030, 4094, 8190 the scalar path; 4096 the paper's.
    for (rows, d) in [
        (2100, 256),
        (2100, 1024),
        (2100, 1022),
        (2100, 1028),
        (7, 1030),
        (513, 4096),
        (5, 2052),
        (3, 4094),
        (3, 8192),
        (2, 4100),
        (2, 8190),
    ] {
        case::<f32>(gpu, &mut rng, rows, d);
    }
    // bf16 (8 a vector): v1 ≤ 2048, v2 ≤ 4096, v4 ≤ 8192 (R = 4, 1, 1).
    for (rows, d) in [
        (2100, 2048),
        (2100, 2044),
        (513, 4096),
        (7, 2056),
        (3, 4092),
        (3, 8192),
        (5, 4104),
        (2, 8188),
    ] {
        case::<bf16>(gpu, &mut rng, rows, d);
    }
}
