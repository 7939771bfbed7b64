//! The multi-tensor AdamW launch (`adamw_step_multi`, kernels/adamw.cu `adamw_multi_*`)
//! against the per-tensor kernels it replaces, bit for bit (the per-tensor kernels are
//! themselves bit-identical to the CPU, tests/cuda_kernels/adamw.rs): the same fresh random
//! parameters, gradients and moments go through both, for all three kinds in one call, over
//! lengths 0, 1, odd, one chunk (65536) exactly and one past it, several chunks; two steps, the
//! second with a clip coefficient < 1 from `grad_norm`; a non-finite norm changes nothing.

use crate::common::gpu::{gpu, Rng};
use half::bf16;
use implicit::backend::cuda::{AdamWStep, AdamWTensor, CudaBackend, DeviceBuffer};
use implicit::optim::AdamWConfig;

const SIZES: [usize; 7] = [0, 1, 7, 65536, 65537, 200_003, 4096 * 3 + 1];

/// One kind's tensors, twice: `a` for the per-tensor kernels, `b` for the multi-tensor one.
struct Pair<P: implicit::backend::cuda::Float, S: implicit::backend::cuda::Float> {
    param: [Vec<DeviceBuffer<P>>; 2],
    master: [Vec<DeviceBuffer<f32>>; 2],
    m: [Vec<DeviceBuffer<S>>; 2],
    v: [Vec<DeviceBuffer<S>>; 2],
}

fn upload_twice<T: implicit::backend::cuda::Float>(
    gpu: &CudaBackend,
    host: &[Vec<T>],
) -> [Vec<DeviceBuffer<T>>; 2] {
    let one = || host.iter().map(|h| gpu.upload(h).unwrap()).collect();
    [one(), one()]
}

fn random_bf16(rng: &mut Rng, n: usize, scale: f32) -> Vec<bf16> {
    rng.vec(n, scale)
        .iter()
        .map(|&x| bf16::from_f32(x))
        .collect()
}

fn pair<P: implicit::backend::cuda::Float, S: implicit::backend::cuda::Float>(
    gpu: &CudaBackend,
    param: &[Vec<P>],
    m: &[Vec<S>],
    v: &[Vec<S>],
    master: &[Vec<f32>],
) -> Pair<P, S> {
    Pair {
        param: upload_twice(gpu, param),
        master: upload_twice(gpu, master),
        m: upload_twice(gpu, m),
        v: upload_twice(gpu, v),
    }
}

fn same<T: implicit::backend::cuda::Float + PartialEq + std::fmt::Debug>(
    gpu: &CudaBackend,
    what: &str,
    a: &[DeviceBuffer<T>],
    b: &[DeviceBuffer<T>],
) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let (x, y) = (gpu.download(x).unwrap(), gpu.download(y).unwrap());
        // Debug prints the shortest form that reads back: equal strings, equal bits (−0 apart).
        let differ = x
            .iter()
            .zip(&y)
            .filter(|(p, q)| format!("{p:?}") != format!("{q:?}"))
            .count();
        assert_eq!(
            differ,
            0,
            "{what} tensor {i} (n {}): {differ} differ",
            x.len()
        );
    }
}

#[test]
fn multi_tensor_adamw_is_bit_identical_to_the_per_tensor_kernels() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("adamw_multi");
    let host_f32 =
        |rng: &mut Rng, s: f32| -> Vec<Vec<f32>> { SIZES.iter().map(|&n| rng.vec(n, s)).collect() };
    let host_bf16 = |rng: &mut Rng, s: f32| -> Vec<Vec<bf16>> {
        SIZES.iter().map(|&n| random_bf16(rng, n, s)).collect()
    };
    let (p16, master) = (host_bf16(&mut rng, 1.0), host_f32(&mut rng, 1.0));
    let (m32, v32) = (host_f32(&mut rng, 0.01), host_f32(&mut rng, 1e-4));
    let mut bf = pair(gpu, &p16, &m32, &v32, &master);
    let p32 = host_f32(&mut rng, 1.0);
    let mut f = pair(gpu, &p32, &m32, &v32, &master);
    let (m16, v16) = (host_bf16(&mut rng, 0.01), host_bf16(&mut rng, 1e-4));
    let mut sr = pair(gpu, &p16, &m16, &v16, &master);
    let config = AdamWConfig::default();
    let mut clip = gpu.upload(&[f32::NAN; 2]).unwrap();
    for t in 1..=3u64 {
        let grads: Vec<DeviceBuffer<f32>> = SIZES
            .iter()
            .map(|&n| gpu.upload(&rng.vec(n, 0.1)).unwrap())
            .collect();
        // Step 1 unclipped, step 2 clipped (coefficient < 1), step 3 a non-finite norm.
        let max_norm = match t {
            1 => 1e9,
            2 => 0.05,
            _ => f32::NAN,
        };
        gpu.grad_norm(&grads.iter().collect::<Vec<_>>(), max_norm, &mut clip)
            .unwrap();
        if t == 3 {
            gpu.upload_into(&[f32::INFINITY, f32::NAN], &mut clip)
                .unwrap();
        }
        let step = AdamWStep::new(&config, 1e-3 * t as f32, t);
        let key = |i: usize| 0x5eed ^ (t << 20) ^ i as u64;
        for (i, g) in grads.iter().enumerate() {
            let [pa, _] = &mut bf.param;
            let [ma, _] = &mut bf.master;
            let ([ea, _], [va, _]) = (&mut bf.m, &mut bf.v);
            gpu.adamw_step_bf16(
                &mut pa[i],
                &mut ma[i],
                g,
                &mut ea[i],
                &mut va[i],
                Some(&clip),
                &step,
            )
            .unwrap();
            let [pa, _] = &mut f.param;
            let ([ea, _], [va, _]) = (&mut f.m, &mut f.v);
            gpu.adamw_step_f32(&mut pa[i], g, &mut ea[i], &mut va[i], Some(&clip), &step)
                .unwrap();
            let [pa, _] = &mut sr.param;
            let ([ea, _], [va, _]) = (&mut sr.m, &mut sr.v);
            gpu.adamw_step_bf16_stochastic(
                &mut pa[i],
                g,
                &mut ea[i],
                &mut va[i],
                Some(&clip),
                &step,
                key(i),
            )
            .unwrap();
        }
        let mut operands = Vec::new();
        let [_, pb] = &mut bf.param;
        let [_, mb] = &mut bf.master;
        let ([_, eb], [_, vb]) = (&mut bf.m, &mut bf.v);
        for ((((param, master), exp_avg), exp_avg_sq), grad) in pb
            .iter_mut()
            .zip(mb.iter_mut())
            .zip(eb.iter_mut())
            .zip(vb.iter_mut())
            .zip(&grads)
        {
            operands.push(AdamWTensor::Bf16 {
                param,
                master,
                grad,
                exp_avg,
                exp_avg_sq,
            });
        }
        let [_, pb] = &mut f.param;
        let ([_, eb], [_, vb]) = (&mut f.m, &mut f.v);
        for (((param, exp_avg), exp_avg_sq), grad) in pb
            .iter_mut()
            .zip(eb.iter_mut())
            .zip(vb.iter_mut())
            .zip(&grads)
        {
            operands.push(AdamWTensor::F32 {
                param,
                grad,
                exp_avg,
                exp_avg_sq,
            });
        }
        let [_, pb] = &mut sr.param;
        let ([_, eb], [_, vb]) = (&mut sr.m, &mut sr.v);
        for (i, (((param, exp_avg), exp_avg_sq), grad)) in pb
            .iter_mut()
            .zip(eb.iter_mut())
            .zip(vb.iter_mut())
            .zip(&grads)
            .enumerate()
        {
            operands.push(AdamWTensor::Bf16Stochastic {
                param,
                grad,
                exp_avg,
                exp_avg_sq,
                key: key(i),
            });
        }
        gpu.adamw_step_multi(operands, Some(&clip), &step).unwrap();
        let tag = |kind: &str, what: &str| format!("step {t} {kind} {what}");
        same(gpu, &tag("bf16", "param"), &bf.param[0], &bf.param[1]);
        same(gpu, &tag("bf16", "master"), &bf.master[0], &bf.master[1]);
        same(gpu, &tag("bf16", "exp_avg"), &bf.m[0], &bf.m[1]);
        same(gpu, &tag("bf16", "exp_avg_sq"), &bf.v[0], &bf.v[1]);
        same(gpu, &tag("f32", "param"), &f.param[0], &f.param[1]);
        same(gpu, &tag("f32", "exp_avg"), &f.m[0], &f.m[1]);
        same(gpu, &tag("f32", "exp_avg_sq"), &f.v[0], &f.v[1]);
        same(gpu, &tag("bf16_sr", "param"), &sr.param[0], &sr.param[1]);
        same(gpu, &tag("bf16_sr", "exp_avg"), &sr.m[0], &sr.m[1]);
        same(gpu, &tag("bf16_sr", "exp_avg_sq"), &sr.v[0], &sr.v[1]);
    }
    // The update did change the values (a test of equal no-ops would prove nothing).
    let after = gpu.download(&f.param[1][3]).unwrap();
    assert_ne!(
        after, p32[3],
        "the multi-tensor step left the f32 parameter as it was"
    );
}
