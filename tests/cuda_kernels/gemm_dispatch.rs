//! Which GEMM `gemm_bf16` runs: `IMPLICIT_GEMM` names the kernels or is an error, and since the
//! first H100 run validated the wgmma kernels (gemm_wgmma.rs), a compute-capability-9.0 device
//! takes them by default for the shapes TMA can read (`IMPLICIT_GEMM=mma` forces
//! kernels/gemm.cu): `wgmma_is_the_default_gemm_on_hopper` checks which kernel ran, bit for bit.

use super::gemm_support::{run, Case, Engine};
use super::gemm_wgmma::WGMMA;
use crate::common::gpu::{hopper_gpu, poisoned, Rng};
use implicit::backend::cuda::{gemm_choice, GemmChoice, GemmLayout, GEMM_ENV};

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
