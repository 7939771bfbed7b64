//! The experiment config's parsing: defaults, the recipe's keys, and errors naming the line.

use super::*;

const SMALL: &str = r#"
name = "t"
seeds = [0, 1]
epochs = [1, 2]
settings = ["base", "instruction", "response", "gsm", "rules", "rules-no-eos"]
[data]
root = "/data"
train_limit = 8
gsm = "gsm8k/test.jsonl"
[judge]
local = "models/judge"
[[model]]
name = "tiny"
path = "models/tiny"
lr = 1e-3
"#;

#[test]
fn parses_a_grid() {
    let c = ExperimentConfig::parse(SMALL).unwrap();
    assert_eq!(c.seeds, vec![0, 1]);
    assert_eq!(c.epochs, vec![1, 2]);
    assert_eq!(c.selection_seed, 0);
    assert_eq!(c.settings.len(), 6);
    assert_eq!(c.settings[5].name(), "rules-no-eos");
    assert_eq!(
        c.trained_settings(),
        vec![
            Setting::Instruction,
            Setting::Response,
            Setting::SingleTask(Task::Gsm)
        ]
    );
    assert_eq!(c.models[0].lr, 1e-3);
    assert_eq!(c.train.recipe.batch_size, 64);
    if std::env::var_os("IMPLICIT_DATA").is_none() {
        assert_eq!(c.source(Task::Gsm), PathBuf::from("/data/gsm8k/test.jsonl"));
    }
    assert!(matches!(c.judge, JudgeSpec::Local { .. }));
}

#[test]
fn setting_names_round_trip() {
    for name in [
        "base",
        "instruction",
        "response",
        "gsm",
        "mbpp",
        "poetry",
        "recipes",
        "chess",
        "rules",
        "rules-no-eos",
        "rules-no-uniform",
        "rules-no-diversity",
    ] {
        assert_eq!(Setting::parse(name).unwrap().name(), name);
    }
    assert!(Setting::parse("lima").is_none());
}

#[test]
fn errors_name_the_line() {
    let bad = SMALL.replace("[judge]", "[judje]");
    let e = ExperimentConfig::parse(&bad).unwrap_err().to_string();
    assert!(
        e.starts_with("line 10: unknown table [judje] (known: name, "),
        "{e}"
    );
    let bad = SMALL.replace("path = \"models/tiny\"\n", "");
    let e = ExperimentConfig::parse(&bad).unwrap_err().to_string();
    assert_eq!(e, "line 12: [[model]] needs `path`");
    let bad = SMALL.replace("lr = 1e-3", "lr = 1e-3\nepochz = 3");
    let e = ExperimentConfig::parse(&bad).unwrap_err().to_string();
    assert!(e.contains("line 16") && e.contains("epochz"), "{e}");
    let bad = SMALL.replace("\"gsm\", ", "\"gsmm\", ");
    let e = ExperimentConfig::parse(&bad).unwrap_err().to_string();
    assert!(e.contains("line 5") && e.contains("gsmm"), "{e}");
    let bad = SMALL.replace("\"instruction\", ", "");
    assert!(ExperimentConfig::parse(&bad)
        .unwrap_err()
        .to_string()
        .contains("instruction"));
    let bad = SMALL.replace("local = \"models/judge\"", "");
    assert!(ExperimentConfig::parse(&bad)
        .unwrap_err()
        .to_string()
        .contains("[judge]"));
}

/// SMALL with `table` put before its `[data]`.
fn with_table(table: &str) -> Result<ExperimentConfig> {
    ExperimentConfig::parse(&SMALL.replace("[data]", &format!("{table}\n[data]")))
}

#[test]
fn train_defaults_to_the_papers_recipe() {
    // No [train], and an empty one, give the recipe `implicit train` defaults to.
    let paper = TrainSpec {
        recipe: Recipe::PAPER,
        device: Device::Cpu,
        checkpointing: CheckpointingChoice::Auto,
        optimizer_state: OptimizerPlacement::Device,
    };
    assert_eq!(ExperimentConfig::parse(SMALL).unwrap().train, paper);
    assert_eq!(with_table("[train]").unwrap().train, paper);
    assert_eq!(Recipe::default(), Recipe::PAPER);
}

#[test]
fn every_train_key_is_read() {
    let c = with_table(
        "[train]\nbatch_size = 8\nmicro_batch = 4\nwarmup = 0\nschedule = \"cosine\"\n\
         weight_decay = 0.1\nmax_grad_norm = 2.5\nmax_len = 96\nprecision = \"f32\"\n\
         device = \"cuda\"\ncheckpointing = true\noptimizer_state = \"host\"",
    )
    .unwrap();
    let want = TrainSpec {
        recipe: Recipe {
            batch_size: 8,
            micro_batch: 4,
            warmup: 0.0,
            schedule: crate::optim::Schedule::Cosine,
            weight_decay: 0.1,
            max_grad_norm: 2.5,
            max_len: 96,
            precision: crate::train::Precision::F32,
        },
        device: Device::Cuda,
        checkpointing: CheckpointingChoice::On,
        optimizer_state: OptimizerPlacement::Host,
    };
    assert_eq!(c.train, want);
}

#[test]
fn train_errors_name_the_line_and_every_key() {
    let e = with_table("[train]\nbatch_size = 8\nbatch_sise = 4")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("line 8: unknown key `batch_sise` in [train] (known: batch_size, ")
            && e.contains("precision, device, checkpointing, optimizer_state)"),
        "{e}"
    );
    let e = with_table("[train]\nwarmup = \"3%\"")
        .unwrap_err()
        .to_string();
    assert_eq!(e, "line 7: `warmup` must be a number, not \"3%\"");
    let e = with_table("[train]\nschedule = \"step\"")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "line 7: `schedule` must be \"linear\", \"cosine\" or \"constant\", not \"step\""
    );
    let e = with_table("[train]\nmax_len = -1").unwrap_err().to_string();
    assert_eq!(
        e,
        "line 7: `max_len` must be a non-negative integer, not -1"
    );
    let e = with_table("train = 3").unwrap_err().to_string();
    assert_eq!(e, "line 6: `train` must be a table, not 3");
}

#[test]
fn a_key_given_twice_is_an_error() {
    // The first value and the last both used to be read, by different readers.
    let twice = SMALL.replace("seeds = [0, 1]", "seeds = [0, 1]\nseeds = [2]");
    let e = ExperimentConfig::parse(&twice).unwrap_err().to_string();
    assert_eq!(e, "line 4: key `seeds` is already set on line 3");
    let e = with_table("[train]\nmax_len = 64\n# again\nmax_len = 128")
        .unwrap_err()
        .to_string();
    assert_eq!(e, "line 9: key `max_len` is already set on line 7");
    let e = with_table("[judge]\nbatch = 2").unwrap_err().to_string();
    assert_eq!(e, "line 12: table [judge] is already defined on line 6");
}

#[test]
fn optimizer_state_choices() {
    let with = |value: &str| {
        let text = SMALL.replace(
            "[data]",
            &format!("[train]\noptimizer_state = \"{value}\"\n[data]"),
        );
        ExperimentConfig::parse(&text)
    };
    assert_eq!(
        ExperimentConfig::parse(SMALL)
            .unwrap()
            .train
            .optimizer_state,
        OptimizerPlacement::Device
    );
    for (value, placement) in [
        ("device", OptimizerPlacement::Device),
        ("host", OptimizerPlacement::Host),
        ("bf16", OptimizerPlacement::Bf16),
    ] {
        assert_eq!(with(value).unwrap().train.optimizer_state, placement);
    }
    let e = with("fp8").unwrap_err().to_string();
    assert!(
        e.contains("line 7") && e.contains("\"fp8\"") && e.contains("\"bf16\""),
        "{e}"
    );
}

#[test]
fn train_values_go_through_the_recipes_check() {
    // Sizes of 0 used to be raised to 1 silently, and a clipping threshold of 0 or a warmup
    // above 1 was taken as it was.
    for (table, message) in [
        (
            "max_grad_norm = 0.0",
            "--max-grad-norm must be finite and above 0 (got 0)",
        ),
        (
            "warmup = 2.0",
            "--warmup is the fraction of steps spent warming up: it must be in [0, 1] (got 2)",
        ),
        (
            "weight_decay = -0.5",
            "--weight-decay must be finite and at least 0 (got -0.5)",
        ),
        ("batch_size = 0", "--batch-size must be at least 1 (got 0)"),
        (
            "micro_batch = 0",
            "--micro-batch must be at least 1 (got 0)",
        ),
        ("max_len = 1", "--max-len must be at least 2 tokens (got 1)"),
    ] {
        let e = with_table(&format!("[train]\n{table}"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, format!("line 6: [train]: {message}"), "{table}");
    }
    let fine = with_table("[train]\nwarmup = 1.0\nmax_len = 2").unwrap();
    assert_eq!(
        (fine.train.recipe.warmup, fine.train.recipe.max_len),
        (1.0, 2)
    );
}

#[test]
fn checkpointing_takes_a_choice_or_a_boolean() {
    for (value, want) in [
        ("\"auto\"", CheckpointingChoice::Auto),
        ("\"on\"", CheckpointingChoice::On),
        ("\"off\"", CheckpointingChoice::Off),
        ("true", CheckpointingChoice::On),
        ("false", CheckpointingChoice::Off),
    ] {
        let c = with_table(&format!("[train]\ncheckpointing = {value}")).unwrap();
        assert_eq!(c.train.checkpointing, want, "{value}");
    }
    for value in ["\"sometimes\"", "5"] {
        let e = with_table(&format!("[train]\ncheckpointing = {value}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`checkpointing`") && e.contains("\"auto\", \"on\", \"off\", true or false"),
            "{value}: {e}"
        );
    }
}
