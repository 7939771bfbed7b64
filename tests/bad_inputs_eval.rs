//! Bad inputs to `eval winrate` and `data build` (issue 15): each is an error naming the file
//! (and line) at fault, with exit status 1 and nothing written, instead of a quiet result.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn implicit(args: &[&str]) -> Output {
    Command::new(common::implicit_bin())
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An annotation as alpaca_eval writes it, with the given preference (JSON text).
fn annotation(i: usize, preference: &str) -> String {
    format!(
        "  {{\n    \"instruction\": \"instruction {i}\",\n    \"output_1\": \"{}\",\n    \
         \"output_2\": \"{}\",\n    \"generator_1\": \"base\",\n    \"generator_2\": \"model\",\n    \
         \"preference\": {preference}\n  }}",
        "a".repeat(10 + 7 * i),
        "b".repeat(40 - 3 * i)
    )
}

fn annotations_file(dir: &Path, preferences: &[&str]) -> std::path::PathBuf {
    let entries: Vec<String> = preferences
        .iter()
        .enumerate()
        .map(|(i, p)| annotation(i, p))
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("annotations.json");
    std::fs::write(&path, format!("[\n{}\n]\n", entries.join(",\n"))).unwrap();
    path
}

#[test]
fn winrate_refuses_preferences_outside_one_to_two() {
    let dir = common::temp_dir("bad-preferences");
    // Each entry is 8 lines ("  {" ... "  }"), after the "[" on line 1: entry i starts on line
    // 2 + 8 i.
    for (bad, shown) in [
        ("7.0", "7.0"),
        ("0.5", "0.5"),
        ("-1", "-1"),
        ("2.0001", "2.0001"),
    ] {
        let mut preferences = [
            "2.0", "1.0", bad, "1.5", "1.2", "1.9", "1.1", "1.0", "2.0", "1.3",
        ];
        let path = annotations_file(&dir, &preferences);
        // Before, the value was dropped and the rest gave a win rate: the same file with a
        // valid value there works.
        preferences[2] = "1.6";
        let valid = annotations_file(&dir.join("valid"), &preferences);
        let o = implicit(&["eval", "winrate", "--annotations", valid.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = implicit(&["eval", "winrate", "--annotations", path.to_str().unwrap()]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{bad}: {e}");
        assert!(
            e.contains(&format!(
                "{} line 18 (entry 2): preference {shown} is outside [1, 2]",
                path.display()
            )),
            "{bad}: {e}"
        );
    }

    // The values AlpacaEval gives meaning to still pass: null (no usable answer) is left out,
    // 0 is the legacy draw (1.5). x = [1, 0, 0.5, 0.75, 0.5]: win rate 55.
    let path = annotations_file(&dir, &["2", "1", "0", "1.75", "null", "1.5"]);
    let o = implicit(&["eval", "winrate", "--annotations", path.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.contains("win rate 55.0000") && out.contains("2 draws, 5 with a preference"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn data_build_refuses_a_source_with_no_rows() {
    let dir = common::temp_dir("empty-sources");
    let cases = [
        // An empty file.
        ("gsm", "train.jsonl", String::new(), "no gsm rows (read 0)"),
        (
            "chess",
            "games.pgn",
            "\n\n".to_string(),
            "no chess rows (read 0)",
        ),
        // A header and nothing under it.
        (
            "poetry",
            "poems.csv",
            "poem_title,poem_text\n".to_string(),
            "no poetry rows (read 0)",
        ),
        // Rows, none of them usable: MBPP's test split given for the train split.
        (
            "mbpp",
            "mbpp.jsonl",
            "{\"task_id\": 11, \"text\": \"t\", \"code\": \"c\"}\n\
             {\"task_id\": 12, \"text\": \"t\", \"code\": \"c\"}\n"
                .to_string(),
            "no mbpp rows (read 2, skipped 2: 2 outside the train split (task_id 601..=974))",
        ),
    ];
    for (task, name, text, why) in cases {
        let source = dir.join(name);
        std::fs::write(&source, text).unwrap();
        let out = dir.join(format!("{task}-out.jsonl"));
        let o = implicit(&[
            "data",
            "build",
            "--task",
            task,
            "--source",
            source.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{task}: {e}");
        assert!(
            e.contains(&format!("{}: {why}; nothing written", source.display())),
            "{task}: {e}"
        );
        assert!(!out.exists(), "{task}: {} written", out.display());
    }
    let _ = std::fs::remove_dir_all(dir);
}
