//! What `implicit eval winrate` prints and writes: the GLM's terms under readable names (the
//! patsy names stay in the JSON), and a clause next to the length-controlled figure saying why it
//! is not AlpacaEval's published one.

mod common;

use serde_json::{json, Value};
use std::path::Path;
use std::process::Output;

fn implicit(args: &[&str]) -> Output {
    std::process::Command::new(common::implicit_bin())
        .args(args)
        .output()
        .unwrap()
}

fn stdout_of(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// 200 annotations of `model` against `baseline`, lengths spread deterministically and the
/// preference driven by the length difference, so the fit has a length term to show.
fn write_annotations(path: &Path, model: &str, baseline: &str) {
    let rows: Vec<Value> = (0..200)
        .map(|i| {
            let len_1 = 50 + (i * 37) % 400;
            let len_2 = 50 + (i * 91) % 400;
            let delta = len_1 as f64 - len_2 as f64;
            let p_model = 1.0 / (1.0 + (2.0 * (delta / 150.0).tanh()).exp());
            json!({
                "instruction": format!("instruction {i}"),
                "output_1": "a".repeat(len_1),
                "output_2": "b".repeat(len_2),
                "generator_1": baseline,
                "generator_2": model,
                "preference": 1.0 + p_model,
            })
        })
        .collect();
    std::fs::write(path, serde_json::to_string(&rows).unwrap()).unwrap();
}

fn line_with<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{text}"))
}

#[test]
fn report_names_terms_and_says_when_lc_is_not_alpaca_evals() {
    let dir = common::temp_dir("winrate-report");
    let annotations = dir.join("annotations.json");
    write_annotations(&annotations, "model-a", "reference");
    let out = dir.join("metrics.json");
    let stdout = stdout_of(&implicit(&[
        "eval",
        "winrate",
        "--annotations",
        annotations.to_str().unwrap(),
        "--json",
        out.to_str().unwrap(),
    ]));
    println!("{stdout}");
    // No Python expression reaches the reader.
    for raw in [
        "np.tanh",
        "std_delta_len",
        "not_gamed_baseline",
        "astype",
        "n_wins_base",
    ] {
        assert!(!stdout.contains(raw), "{raw:?} printed:\n{stdout}");
    }
    let lc_line = line_with(&stdout, "length-controlled win rate");
    assert!(
        lc_line.contains("(no --difficulty: not comparable to AlpacaEval's published LC figures)"),
        "{lc_line}"
    );
    let fit = line_with(&stdout, "logistic fit");
    for term in [
        "length (tanh of standardised length difference) -",
        "model intercept",
    ] {
        assert!(fit.contains(term), "{term:?} not in {fit:?}");
    }
    assert!(!fit.contains("instruction difficulty"), "{fit}");
    assert!(line_with(&stdout, "model-a vs reference").contains("with a preference"));

    // The JSON keeps its keys (patsy names included) and adds the readable ones.
    let v = read_json(&out);
    for key in [
        "annotations",
        "model",
        "baseline",
        "win_rate",
        "standard_error",
        "n_wins",
        "n_wins_base",
        "n_draws",
        "n_total",
        "discrete_win_rate",
        "length_controlled_winrate",
    ] {
        assert!(v.get(key).is_some(), "{key} missing from {v}");
    }
    let glm = &v["glm"];
    assert_eq!(glm["with_difficulty"], json!(false));
    assert_eq!(
        v["length_controlled_note"],
        json!("no --difficulty: not comparable to AlpacaEval's published LC figures")
    );
    let coefficients = glm["coefficients"].as_array().unwrap();
    let terms = glm["terms"].as_array().unwrap();
    assert_eq!(coefficients.len(), 2, "{glm}");
    assert_eq!(terms.len(), 2, "{glm}");
    for (c, t) in coefficients.iter().zip(terms) {
        assert_eq!(c[0], t["patsy"], "{glm}");
        assert_eq!(c[1], t["coefficient"], "{glm}");
    }
    assert_eq!(coefficients[0][0], json!("np.tanh(std_delta_len)"));
    assert_eq!(
        terms[0]["name"],
        json!("length (tanh of standardised length difference)")
    );
    // Preferences fall as the baseline's output grows longer: a negative length coefficient.
    assert!(terms[0]["coefficient"].as_f64().unwrap() < 0.0, "{glm}");

    // With --difficulty the term is named and the clause says what still differs.
    let csv = dir.join("difficulty.csv");
    let body: String = (0..200)
        .map(|i| format!("{i},{}\n", (i % 7) as f64 / 7.0))
        .collect();
    std::fs::write(&csv, format!(",instruction_difficulty\n{body}")).unwrap();
    let stdout = stdout_of(&implicit(&[
        "eval",
        "winrate",
        "--annotations",
        annotations.to_str().unwrap(),
        "--difficulty",
        csv.to_str().unwrap(),
    ]));
    println!("{stdout}");
    let lc_line = line_with(&stdout, "length-controlled win rate");
    assert!(!lc_line.contains("no --difficulty"), "{lc_line}");
    assert!(lc_line.contains("gamed-baseline rows"), "{lc_line}");
    assert!(line_with(&stdout, "logistic fit").contains("instruction difficulty"));
    assert!(!stdout.contains("instruction_difficulty"), "{stdout}");

    // The baseline against itself: 50 by construction, no fit to show.
    let same = dir.join("same.json");
    write_annotations(&same, "reference", "reference");
    let stdout = stdout_of(&implicit(&[
        "eval",
        "winrate",
        "--annotations",
        same.to_str().unwrap(),
    ]));
    println!("{stdout}");
    assert!(
        line_with(&stdout, "length-controlled win rate 50.0000").contains("by construction"),
        "{stdout}"
    );
    assert!(!stdout.contains("logistic fit"), "{stdout}");
}

#[test]
fn report_on_real_alpaca_7b_annotations() {
    let Some(data) = common::data_dir("report_on_real_alpaca_7b_annotations") else {
        return;
    };
    let path = data.join("alpaca_eval/annotations/alpaca-7b.json");
    let stdout = stdout_of(&implicit(&[
        "eval",
        "winrate",
        "--annotations",
        path.to_str().unwrap(),
    ]));
    println!("{stdout}");
    // AlpacaEval 2's leaderboard: n_wins 17, n_wins_base 785, n_draws 3, n_total 805.
    assert!(
        stdout.contains(
            "win rate 2.5915 ± 0.4871 (17 wins, 785 losses, 3 draws, 805 with a preference)"
        ),
        "{stdout}"
    );
    // 19.61 without difficulty and gamed baselines (the leaderboard's 5.875 needs both; see
    // src/eval/winrate.rs), flagged as such on the same line.
    assert!(
        stdout.contains(
            "length-controlled win rate 19.6106 (no --difficulty: not comparable to AlpacaEval's published LC figures)"
        ),
        "{stdout}"
    );
}
