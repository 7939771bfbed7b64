//! The plan's byte counts at Llama-2-7B's and OLMo-7B's shapes, and `auto`'s choice.

use super::*;

fn llama2_7b() -> ModelConfig {
    ModelConfig::from_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/models/llama2-7b.json"),
    )
    .unwrap()
}

#[test]
fn llama2_7b_counts() {
    let c = llama2_7b();
    assert_eq!(c.num_parameters(), 6_738_415_616);
    // Every parameter but the embedding table and the norms multiplies activations.
    let norms = 2 * 32 * 4096 + 4096;
    assert_eq!(matmul_parameters(&c), 6_738_415_616 - 32000 * 4096 - norms);
    let expected = 6.0 * matmul_parameters(&c) as f64 + 12.0 * 32.0 * 4096.0 * 2048.0;
    assert_eq!(flops_per_token(&c, 2048), expected);
}

#[test]
fn llama2_7b_plan() {
    let c = llama2_7b();
    let kept = MemoryPlan::new(&c, 2048, 1, Checkpointing::Off, OptimizerPlacement::Device);
    assert_eq!(kept.state, 6_738_415_616 * 18);
    // Per token and layer: 2·4·4096 + 2·4·4096 + 4·32 + 4·11008 = 109696 bytes.
    assert_eq!(kept.activations, 2048 * (32 * 109_696 + 4 * 4096));
    let ckpt = MemoryPlan::new(&c, 2048, 1, Checkpointing::On, OptimizerPlacement::Device);
    assert_eq!(ckpt.activations, 2048 * (32 * 4 * 4096 + 4 * 4096));
    assert!(
        ckpt.workspace > kept.workspace,
        "recomputation adds one layer"
    );
    assert!(ckpt.total() < kept.total());
    // The state alone is 113 GiB: more than an 80 GB H100, less than an H200.
    let h100 = 80u64 * 1_000_000_000;
    assert!(kept.describe(None, Some(h100)).contains("does not fit"));
    assert!(!ckpt
        .describe(Some(ckpt.total()), Some(141 << 30))
        .contains("does not fit"));
    let hint = kept.describe(None, Some(h100));
    assert!(hint.contains("--optimizer-state bf16") && hint.contains("--optimizer-state host"));
}

#[test]
fn llama2_7b_bf16_state_fits_an_h100() {
    let c = llama2_7b();
    assert_eq!(OptimizerPlacement::Bf16.device_bytes_per_parameter(), 10);
    assert_eq!(OptimizerPlacement::Bf16.host_bytes_per_parameter(), 0);
    let bf16 = MemoryPlan::new(&c, 2048, 1, Checkpointing::On, OptimizerPlacement::Bf16);
    assert_eq!(bf16.state, 6_738_415_616 * 10);
    assert_eq!(bf16.host, 0);
    let device = MemoryPlan::new(&c, 2048, 1, Checkpointing::On, OptimizerPlacement::Device);
    // Only the state differs: no staging buffers, the same activations and workspace.
    assert_eq!(
        (bf16.activations, bf16.workspace),
        (device.activations, device.workspace)
    );
    // 62.8 GiB of state: an 80 GB H100 (80e9 bytes = 74.5 GiB) holds it with checkpointing.
    let h100 = 80u64 * 1_000_000_000;
    assert!(bf16.total() < h100, "{}", bf16.describe(None, Some(h100)));
    let text = bf16.describe(None, Some(h100));
    assert!(
        text.contains("10 bytes each") && text.contains("bf16 moments"),
        "{text}"
    );
    assert!(
        !text.contains("does not fit") && !text.contains("host:"),
        "{text}"
    );
}

/// (config, seq, micro-batch, checkpointing, placement, activations, workspace) as the plan
/// printed them before selective checkpointing (commit b6b0b0b, every layer kept or none).
const ALL_OR_NOTHING: [(&str, usize, usize, bool, OptimizerPlacement, u64, u64); 8] = [
    (
        "llama2-7b.json",
        2048,
        1,
        false,
        OptimizerPlacement::Bf16,
        7222591488,
        295698432,
    ),
    (
        "llama2-7b.json",
        2048,
        1,
        true,
        OptimizerPlacement::Bf16,
        1107296256,
        415498240,
    ),
    (
        "llama2-7b.json",
        4096,
        2,
        false,
        OptimizerPlacement::Device,
        28890365952,
        897581056,
    ),
    (
        "llama2-7b.json",
        4096,
        2,
        true,
        OptimizerPlacement::Device,
        4429185024,
        1661992960,
    ),
    (
        "olmo-7b.json",
        512,
        3,
        false,
        OptimizerPlacement::Device,
        5416943616,
        293587968,
    ),
    (
        "olmo-7b.json",
        512,
        3,
        true,
        OptimizerPlacement::Device,
        830472192,
        311623680,
    ),
    (
        "olmo-7b.json",
        2048,
        1,
        false,
        OptimizerPlacement::Host,
        7222591488,
        2472542208,
    ),
    (
        "olmo-7b.json",
        2048,
        1,
        true,
        OptimizerPlacement::Host,
        1107296256,
        2472542208,
    ),
];

fn model(file: &str) -> ModelConfig {
    ModelConfig::from_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("configs/models")
            .join(file),
    )
    .unwrap()
}

#[test]
fn no_layer_or_every_layer_kept_is_the_former_plan_byte_for_byte() {
    for (file, seq, mb, checkpointing, placement, activations, workspace) in ALL_OR_NOTHING {
        let c = model(file);
        let kept = if checkpointing { 0 } else { c.num_layers };
        for policy in [
            if checkpointing {
                Checkpointing::On
            } else {
                Checkpointing::Off
            },
            Checkpointing::KeepLast(kept),
        ] {
            let p = MemoryPlan::new(&c, seq, mb, policy, placement);
            assert_eq!(
                (p.activations, p.workspace, p.kept_layers),
                (activations, workspace, kept),
                "{file} {seq}x{mb} {policy:?} {placement:?}"
            );
        }
    }
    // More than the model's layers is all of them.
    let c = model("llama2-7b.json");
    let off = MemoryPlan::new(&c, 2048, 1, Checkpointing::Off, OptimizerPlacement::Bf16);
    let many = Checkpointing::KeepLast(1000);
    assert_eq!(
        MemoryPlan::new(&c, 2048, 1, many, OptimizerPlacement::Bf16),
        off
    );
}

#[test]
fn every_kept_layer_adds_its_activations_less_its_input() {
    let c = llama2_7b();
    let plan = |k| {
        let policy = Checkpointing::KeepLast(k);
        MemoryPlan::new(&c, 2048, 1, policy, OptimizerPlacement::Bf16)
    };
    // 109696 bytes kept per token and layer against its 4·4096-byte input.
    let step = 2048 * (109_696 - 4 * 4096);
    for k in 1..32 {
        assert_eq!(plan(k + 1).activations - plan(k).activations, step, "{k}");
        assert_eq!(plan(k + 1).workspace, plan(k).workspace, "{k}");
    }
    // Keeping the last layer drops the recomputed layer from the workspace: here the loss
    // chunk (2048 rows of 32000 bf16 logits and their gradient) is then the larger working
    // set, so one kept layer costs 71.3 MB more than none.
    assert_eq!(plan(1).activations - plan(0).activations, step);
    assert_eq!(plan(1).workspace, 4 * 2048 * 32000 + 2048 * 4 * 4096);
    assert!(plan(0).total() < plan(1).total());
}

#[test]
fn the_policy_keeps_the_last_layers() {
    let kept = |p: Checkpointing| (0..4).map(|l| p.keeps(l, 4)).collect::<Vec<_>>();
    assert_eq!(kept(Checkpointing::Off), [true; 4]);
    assert_eq!(kept(Checkpointing::On), [false; 4]);
    assert_eq!(
        kept(Checkpointing::KeepLast(1)),
        [false, false, false, true]
    );
    assert_eq!(kept(Checkpointing::KeepLast(3)), [false, true, true, true]);
    assert_eq!(kept(Checkpointing::KeepLast(9)), [true; 4]);
    assert_eq!(Checkpointing::KeepLast(9).kept_layers(4), 4);
}

#[test]
fn auto_keeps_every_layer_of_llama2_7b_with_bf16_state_on_an_h100() {
    let c = llama2_7b();
    let h100 = 80u64 * 1_000_000_000;
    let choose_for = |seq, mb, placement| {
        let state = MemoryPlan::new(&c, seq, mb, Checkpointing::On, placement).state;
        choose(&c, seq, mb, placement, h100.saturating_sub(state))
    };
    // 62.76 GiB of state leaves 11.75 GiB of the 80 GB (10.75 after the margin); all 32
    // layers' activations and the workspace take 7.00 GiB.
    assert_eq!(
        choose_for(2048, 1, OptimizerPlacement::Bf16),
        Checkpointing::Off
    );
    // Twice the tokens take 13.9 GiB with every layer kept: 23 layers keep theirs
    // (2.06 GiB for the inputs and the final output, 0.36 GiB more per kept layer, 0.42
    // GiB of workspace).
    let some = choose_for(2048, 2, OptimizerPlacement::Bf16);
    let kept = some.kept_layers(32);
    assert_eq!(some, Checkpointing::KeepLast(23));
    let plan = |k| {
        let policy = Checkpointing::KeepLast(k);
        MemoryPlan::new(&c, 2048, 2, policy, OptimizerPlacement::Bf16)
    };
    let budget = h100 - plan(0).state - AUTO_MARGIN_BYTES;
    assert!(plan(kept).total() - plan(kept).state <= budget);
    assert!(plan(kept + 1).total() - plan(kept + 1).state > budget);
    let text = plan(kept).describe(None, Some(h100));
    let line = format!(
        "checkpointing: {kept} of 32 layers keep their activations, {} recompute",
        32 - kept
    );
    assert!(text.contains(&line), "{text}");
    // fp32 master and moments on the GPU (113 GiB) leave nothing: every layer recomputes.
    assert_eq!(
        choose_for(2048, 1, OptimizerPlacement::Device),
        Checkpointing::On
    );
    // In host memory (37.65 GiB on the GPU) every layer fits again.
    assert_eq!(
        choose_for(2048, 1, OptimizerPlacement::Host),
        Checkpointing::Off
    );
}

#[test]
fn auto_takes_the_most_layers_that_fit() {
    let c = llama2_7b();
    let needs = |k| {
        let policy = Checkpointing::KeepLast(k);
        let p = MemoryPlan::new(&c, 2048, 1, policy, OptimizerPlacement::Bf16);
        p.activations + p.workspace + AUTO_MARGIN_BYTES
    };
    let at = |free| choose(&c, 2048, 1, OptimizerPlacement::Bf16, free);
    assert_eq!(at(needs(24)), Checkpointing::KeepLast(24));
    assert_eq!(at(needs(24) - 1), Checkpointing::KeepLast(23));
    assert_eq!(at(needs(32)), Checkpointing::Off);
    assert_eq!(at(needs(32) - 1), Checkpointing::KeepLast(31));
    assert_eq!(at(needs(1)), Checkpointing::KeepLast(1));
    assert_eq!(at(needs(1) - 1), Checkpointing::On);
    assert_eq!(at(0), Checkpointing::On);
    let plan = MemoryPlan::new(&c, 2048, 1, at(needs(24)), OptimizerPlacement::Bf16);
    let text = plan.describe(None, None);
    assert!(
        text.contains("checkpointing: 24 of 32 layers keep their activations, 8 recompute"),
        "{text}"
    );
    // The choice of a command line: auto chooses, on and off are fixed.
    let resolve = |choice: CheckpointingChoice| {
        choice.resolve(&c, 2048, 1, OptimizerPlacement::Bf16, needs(24))
    };
    assert_eq!(
        resolve(CheckpointingChoice::Auto),
        Checkpointing::KeepLast(24)
    );
    assert_eq!(resolve(CheckpointingChoice::On), Checkpointing::On);
    assert_eq!(resolve(CheckpointingChoice::Off), Checkpointing::Off);
}

#[test]
fn checkpointing_parses_from_the_command_line_and_serialises() {
    use clap::ValueEnum;
    for (name, choice) in [
        ("auto", CheckpointingChoice::Auto),
        ("on", CheckpointingChoice::On),
        ("off", CheckpointingChoice::Off),
    ] {
        assert_eq!(CheckpointingChoice::from_str(name, false), Ok(choice));
        assert_eq!(serde_json::to_value(choice).unwrap(), name);
        let back: CheckpointingChoice = serde_json::from_value(name.into()).unwrap();
        assert_eq!(back, choice);
    }
    assert!(CheckpointingChoice::from_str("sometimes", false).is_err());
    for (policy, json) in [
        (Checkpointing::Off, serde_json::json!("off")),
        (Checkpointing::On, serde_json::json!("on")),
        (
            Checkpointing::KeepLast(24),
            serde_json::json!({"keep_last": 24}),
        ),
    ] {
        assert_eq!(serde_json::to_value(policy).unwrap(), json);
        let back: Checkpointing = serde_json::from_value(json).unwrap();
        assert_eq!(back, policy);
    }
}

#[test]
fn placements_parse_from_the_command_line_and_serialise() {
    use clap::ValueEnum;
    for (name, p) in [
        ("device", OptimizerPlacement::Device),
        ("host", OptimizerPlacement::Host),
        ("bf16", OptimizerPlacement::Bf16),
    ] {
        assert_eq!(OptimizerPlacement::from_str(name, false), Ok(p));
        assert_eq!(serde_json::to_value(p).unwrap(), name);
    }
}

#[test]
fn auto_keeps_every_layer_of_llama2_7b_with_fp32_state_on_an_h200() {
    // The paper's numerics (fp32 master weights and moments on the GPU, 18 bytes a parameter,
    // 112.96 GiB) on an H200, whose nvidia-smi total is 143771 MiB (140.4 GiB): 27.4 GiB stay
    // beside the state, and all 32 layers' activations with the workspace take 7.00 GiB, so
    // nothing is recomputed (the "paper" step of tools/gpu_check.sh measures this).
    let c = llama2_7b();
    let h200 = 143_771u64 << 20;
    let placement = OptimizerPlacement::Device;
    let state = MemoryPlan::new(&c, 2048, 1, Checkpointing::On, placement).state;
    assert_eq!(
        choose(&c, 2048, 1, placement, h200 - state),
        Checkpointing::Off
    );
    let plan = MemoryPlan::new(&c, 2048, 1, Checkpointing::Off, placement);
    assert!(!plan.describe(None, Some(h200)).contains("does not fit"));
    // Two sequences a micro-batch (13.9 GiB of activations) still keep every layer.
    assert_eq!(
        choose(&c, 2048, 2, placement, h200 - state),
        Checkpointing::Off
    );
}
