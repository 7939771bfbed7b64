//! The step profile's recorder (src/backend/cuda/profile.rs, `bench train --profile`) on a
//! checkpointed training step: every phase the trainer marks gets its spans, the spans lie in
//! queue order inside the profile, every name has a kernel family, and recording changes
//! nothing the step computes.

use super::*;
use implicit::bench::train::profile::{family, Family, Span, StepProfile};

#[test]
fn a_profiled_step_records_every_phase_and_changes_nothing() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new("a_profiled_step_records_every_phase_and_changes_nothing");
    let (_, config) = flash_configs().remove(0);
    let values = rounded(random_values(&config, &mut rng));
    let batch = batch_of(&mut rng, &[96, 57], config.vocab_size);
    let seqs = sequences(&batch);
    let run = |profile: bool| {
        let mut t = CudaTrainer::from_values(gpu, config.clone(), &values, adamw()).unwrap();
        t.checkpointing = Checkpointing::On;
        if profile {
            gpu.profile_start().unwrap();
        }
        t.zero_grads().unwrap();
        let loss = t.accumulate(&seqs, 0.5).unwrap();
        let grads = t.gradients().unwrap().concat();
        t.step(1e-3, 1.0).unwrap();
        let recorded = profile.then(|| gpu.profile_finish().unwrap());
        (loss, grads, recorded)
    };
    let (loss, grads, _) = run(false);
    let (p_loss, p_grads, recorded) = run(true);
    let recorded = recorded.expect("profiled");
    assert_eq!(loss, p_loss, "the same forward");
    let reference: Vec<f64> = grads.iter().map(|&x| x as f64).collect();
    // As checkpointing_gives_the_same_gradients_in_less_memory: the same products, only the
    // atomics (flash dq, the embedding) may add in another order.
    check("profiled vs not", &p_grads, &reference, 1e-4);

    let spans = &recorded.spans;
    assert!(!spans.is_empty());
    let mut previous_end = 0.0;
    for s in spans {
        // One stream: each span starts after the previous one ended, inside the profile.
        assert!(
            s.start_ms >= previous_end && s.end_ms >= s.start_ms && s.end_ms <= recorded.total_ms,
            "{s:?} after {previous_end} ms, profile {} ms",
            recorded.total_ms
        );
        previous_end = s.end_ms;
        assert_ne!(family(s.name), Family::Other, "{} has no family", s.name);
    }
    let has = |phase: &str, what: &dyn Fn(&str) -> bool| {
        spans.iter().any(|s| s.phase == phase && what(s.name))
    };
    let gemm = |n: &str| family(n) == Family::Gemm;
    assert!(has("zero_grads", &|n| n == "memset_zeros"));
    assert!(has("forward", &gemm) && has("recompute", &gemm) && has("backward", &gemm));
    assert!(has("loss", &|n| n.starts_with("cross_entropy_")));
    assert!(
        has("loss", &|n| n == "memcpy_dtoh"),
        "the loss is read back"
    );
    assert!(has("backward", &|n| family(n) == Family::AttentionBackward));
    assert!(has("optimizer", &|n| n.starts_with("adamw_")));
    // gradients() downloads between accumulate and step: still the backward phase's.
    assert!(has("backward", &|n| n == "memcpy_dtoh"));

    let as_spans: Vec<Span> = spans
        .iter()
        .map(|s| Span {
            name: s.name,
            phase: s.phase,
            start_ms: s.start_ms,
            end_ms: s.end_ms,
        })
        .collect();
    let table = StepProfile::new(&as_spans, recorded.total_ms);
    let sum = table.kernel_ms + table.gap_ms;
    assert!((sum - table.total_ms).abs() <= 1e-9 * table.total_ms.max(1.0));
    for line in table.lines(recorded.total_ms, recorded.total_ms, 8) {
        eprintln!("{line}");
    }

    // Off again: finishing twice is an error, and a profile cannot start inside another.
    assert!(!gpu.profiling());
    assert!(gpu.profile_finish().is_err());
    gpu.profile_start().unwrap();
    assert!(gpu.profile_start().is_err());
    let empty = gpu.profile_finish().unwrap();
    assert!(empty.spans.is_empty() && empty.total_ms >= 0.0);
}
