//! `implicit experiment plan`: the counts of the smoke grid, worked out by hand from
//! configs/smoke.toml, and hours from given throughputs.

mod common;

use std::process::Command;

#[test]
fn smoke_grid_counts_and_hours() {
    let Some(data) = common::data_dir("smoke_grid_counts_and_hours") else {
        return;
    };
    let out = common::temp_dir("experiment-plan");
    let json = out.join("plan.json");
    let run = Command::new(env!("CARGO_BIN_EXE_implicit"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("IMPLICIT_DATA", &data)
        .args([
            "experiment",
            "plan",
            "configs/smoke.toml",
            "--train-tokens-per-s",
            "10",
            "--prefill-tokens-per-s",
            "100",
            "--decode-tokens-per-s",
            "1",
            "--json",
            json.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{stdout}");
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let model = &plan["models"][0];
    let count = |phases: &str, i: usize| model[phases][i]["count"].as_u64().unwrap();
    // 4 trained settings (instruction, response, gsm, poetry) × sweep {1, 2}; one other seed.
    assert_eq!(count("phases_min", 0), 8);
    assert_eq!(count("phases_min", 1), 4);
    // Validation: 8 runs × 4 instructions; test: (4 trained × 2 seeds + 5 untrained) × 4.
    assert_eq!(count("phases_min", 2), 32);
    assert_eq!(count("phases_min", 3), 52);
    // Judge: 8 × 4 validation + (9 settings − instruction) × 2 seeds × 4 test.
    assert_eq!(count("phases_min", 4), 96);
    // Ranking: base + (instruction, response) × 2 seeds, 12 examples × (1 + 5 negatives).
    assert_eq!(count("phases_min", 5), 360);
    // Tokens of the sweep: one epoch of every set × (1 + 2) epochs; other seeds × 1 or × 2.
    let epoch: u64 = model["epoch_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[1].as_u64().unwrap())
        .sum();
    assert!(epoch > 0);
    assert_eq!(
        model["phases_min"][0]["train_tokens"].as_u64(),
        Some(3 * epoch)
    );
    assert_eq!(model["phases_min"][1]["train_tokens"].as_u64(), Some(epoch));
    assert_eq!(
        model["phases_max"][1]["train_tokens"].as_u64(),
        Some(2 * epoch)
    );
    // Hours: the sweep's tokens at 10 tokens/s.
    let hours = format!("{:.2}", 3.0 * epoch as f64 / 10.0 / 3600.0);
    assert!(
        stdout.contains(&format!("| train: epoch sweep | 8 runs | {} |", 3 * epoch)),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("{hours} / {hours} |")), "{stdout}");
    assert!(stdout.contains("GPU hours in all:"), "{stdout}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_missing_model_asks_for_its_shape() {
    let Some(data) = common::data_dir("a_missing_model_asks_for_its_shape") else {
        return;
    };
    let run = Command::new(env!("CARGO_BIN_EXE_implicit"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("IMPLICIT_DATA", &data)
        .args(["experiment", "plan", "configs/paper-llama2-7b.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("give its config.json with --shape"),
        "{stderr}"
    );
}

/// The paper's Llama-2-7B grid generates at batch 32; the H100 run measured decode at batches 1
/// (115.9 tokens/s) and 64 (2886.0). The plan must price its answers between the two, from the
/// step time interpolated at 32, not at the nearest measured batch (batch 1, which made test
/// generation 40.6 of the grid's 51.5-57.2 GPU hours).
#[test]
fn the_paper_grid_prices_generation_at_the_batch_it_generates_with() {
    let Some(data) = common::data_dir("the_paper_grid_prices_generation_at_its_batch") else {
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = common::temp_dir("experiment-plan-rates");
    let json = out.join("plan.json");
    let run = Command::new(env!("CARGO_BIN_EXE_implicit"))
        .current_dir(root)
        .env("IMPLICIT_DATA", &data)
        .args([
            "experiment",
            "plan",
            "configs/paper-llama2-7b.toml",
            "--tokenizer",
        ])
        .arg(data.join("tokenizers/llama2-tokenizer.json"))
        .args([
            "--shape",
            "configs/models/llama2-7b.json",
            "--bench-generate",
        ])
        .arg(root.join("benches/results/h100-2026-12-06/generate/bench_generate.json"))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{stdout}");
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let decode = plan["throughputs"]["decode"].as_f64().unwrap();
    // 32 / (8.626 ms + 31/63 · (22.176 − 8.626) ms) = 2092 tokens/s.
    assert!((2085.0..2100.0).contains(&decode), "decode {decode}");
    let basis = plan["throughputs"]["generation_basis"].as_str().unwrap();
    assert!(
        basis.contains("batch 32") && basis.contains("between batches 1 and 64"),
        "{basis}"
    );
    // Test generation: its estimated tokens at that rate, under 3 GPU hours.
    let test = &plan["models"][0]["phases_min"][3];
    assert_eq!(test["name"], "generate: test");
    let hours = (test["decode_tokens"].as_f64().unwrap() / decode
        + test["prefill_tokens"].as_f64().unwrap()
            / plan["throughputs"]["prefill"].as_f64().unwrap())
        / 3600.0;
    assert!(hours < 3.0, "{hours}");
    assert!(stdout.contains("step time interpolated"), "{stdout}");
    let _ = std::fs::remove_dir_all(&out);
}
