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
