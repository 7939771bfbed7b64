//! `implicit experiment run configs/smoke.toml` end to end (stories260K as model, judge and
//! embedder): every step runs, the tables and figures trace back to existing artifacts, a second
//! run does nothing, a run killed midway and continued ends with exactly the uninterrupted
//! run's tables, and a changed setting is refused for the cells it would change.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const TABLES: [&str; 5] = [
    "response_tuning",
    "single_task",
    "rule_adapter",
    "response_ranking",
    "epoch_selection",
];

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn implicit(data: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_implicit"));
    cmd.args(args)
        .current_dir(crate_dir())
        .env("IMPLICIT_DATA", data);
    cmd
}

fn run_smoke(data: &Path, config: &Path, results: &Path) -> Output {
    let out = implicit(
        data,
        &[
            "experiment",
            "run",
            config.to_str().unwrap(),
            "--results",
            results.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "experiment run failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn manifest(results: &Path) -> Value {
    let text = std::fs::read_to_string(results.join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn smoke_grid_runs_resumes_and_reports() {
    let Some(data) = common::data_dir("smoke_grid_runs_resumes_and_reports") else {
        return;
    };
    let dir = common::temp_dir("experiment");
    let config = crate_dir().join("configs/smoke.toml");

    // 1. Uninterrupted.
    let full = dir.join("full");
    let out = run_smoke(&data, &config, &full);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("### Response tuning"), "{stdout}");
    let m = manifest(&full);
    let steps = m["steps"].as_object().unwrap();
    // 4 trained settings x (2 swept runs x train/val/judge + selection) + test seeds, ...
    assert!(steps.len() > 60, "only {} steps recorded", steps.len());
    for (key, rec) in steps {
        for a in rec["artifacts"].as_array().unwrap() {
            let p = full.join(a.as_str().unwrap());
            assert!(p.exists(), "step {key}: artifact {} missing", p.display());
        }
    }
    assert!(m["inputs"].as_object().unwrap().len() >= 5);
    assert!(m["runs"][0]["commit"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    for t in TABLES {
        let csv = read(full.join(format!("tables/{t}.csv")));
        let md = read(full.join(format!("tables/{t}.md")));
        assert!(md.starts_with("### "), "{t}.md: {md}");
        let mut numbers = 0;
        for line in csv.lines().skip(1) {
            let fields: Vec<&str> = line.split(',').collect();
            let n: usize = fields[5].parse().unwrap();
            if n > 0 {
                numbers += 1;
                for a in fields.last().unwrap().split(';') {
                    assert!(full.join(a).exists(), "{t}.csv cites missing {a}");
                }
            }
        }
        assert!(numbers > 0, "{t}.csv has no numbers:\n{csv}");
    }
    // Two seeds: every win-rate cell of the trained and untrained settings has both.
    let rules = read(full.join("tables/rule_adapter.csv"));
    assert!(
        rules
            .lines()
            .skip(1)
            .all(|l| l.split(',').nth(5) == Some("2")),
        "{rules}"
    );
    for f in ["winrates", "ranking"] {
        for ext in ["png", "svg"] {
            let p = full.join(format!("figures/{f}.{ext}"));
            assert!(
                std::fs::metadata(&p).is_ok_and(|m| m.len() > 100),
                "{}",
                p.display()
            );
        }
    }
    // The figures are pictures: the win-rate PNG decodes at figures.rs's 1000 x 560, white
    // with the series' colours on it; its SVG has the title; Figure 5 has a dot per point of the
    // single-task settings' similarity.json (selected run, first seed) and one legend dot each.
    let png = std::fs::read(full.join("figures/winrates.png")).unwrap();
    let mut reader = png::Decoder::new(std::io::Cursor::new(png))
        .read_info()
        .unwrap();
    let mut rgb = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut rgb).unwrap();
    assert_eq!((info.width, info.height), (1000, 560));
    let pixels = || rgb[..info.buffer_size()].chunks(3);
    assert!(pixels().filter(|p| *p == [255, 255, 255]).count() > 1000 * 560 / 2);
    let first_series = pixels().filter(|p| *p == [0x00, 0x72, 0xB2]).count();
    assert!(
        first_series >= 100,
        "{first_series} pixels of the first series' colour"
    );
    let winrates = read(full.join("figures/winrates.svg"));
    assert!(
        winrates.contains("Win rate against instruction tuning (2 seeds)"),
        "{winrates}"
    );
    let mut dots = 0;
    for setting in ["gsm", "poetry"] {
        let sel: Value = serde_json::from_str(&read(
            full.join(format!("stories260k/{setting}/selection.json")),
        ))
        .unwrap();
        let e = sel["selected_epochs"].as_u64().unwrap();
        let sim: Value = serde_json::from_str(&read(
            full.join(format!("stories260k/{setting}/seed1-e{e}/similarity.json")),
        ))
        .unwrap();
        dots += 1 + sim["points"].as_array().unwrap().len();
    }
    let scatter = read(full.join("figures/similarity-stories260k.svg"));
    assert_eq!(scatter.matches("<circle ").count(), dots, "{scatter}");
    // The selected run of each trained setting keeps its weights; the others give them back.
    let sel: Value =
        serde_json::from_str(&read(full.join("stories260k/gsm/selection.json"))).unwrap();
    let chosen = sel["selected_epochs"].as_u64().unwrap();
    for e in [1, 2] {
        let w = full.join(format!(
            "stories260k/gsm/seed1-e{e}/train/epoch-{e}/model.safetensors"
        ));
        assert_eq!(w.exists(), e == chosen, "{}", w.display());
    }

    // 2. Again: nothing to do, nothing changes.
    let out = run_smoke(&data, &config, &full);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("] stories260k/") && !stderr.contains("] data/"),
        "a finished step ran again:\n{stderr}"
    );
    assert_eq!(manifest(&full)["steps"], m["steps"]);

    // 3. Killed midway (after 30 steps), then continued: the steps finished before the kill
    //    are kept as they were, and the tables equal the uninterrupted run's.
    let killed = dir.join("killed");
    let mut child = implicit(
        &data,
        &[
            "experiment",
            "run",
            config.to_str().unwrap(),
            "--results",
            killed.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let t0 = Instant::now();
    let before = loop {
        assert!(t0.elapsed() < Duration::from_secs(300), "no progress");
        if let Ok(text) = std::fs::read_to_string(killed.join("manifest.json")) {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                if v["steps"].as_object().is_some_and(|s| s.len() >= 30) {
                    break v;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    run_smoke(&data, &config, &killed);
    let after = manifest(&killed);
    for (key, rec) in before["steps"].as_object().unwrap() {
        assert_eq!(&after["steps"][key], rec, "step {key} was redone");
    }
    assert_eq!(after["runs"].as_array().unwrap().len(), 2);
    for t in TABLES {
        assert_eq!(
            read(killed.join(format!("tables/{t}.csv"))),
            read(full.join(format!("tables/{t}.csv"))),
            "{t}: the continued run differs from the uninterrupted one"
        );
    }

    // 4. A changed learning rate: refused for the finished cells it would change.
    let changed = dir.join("changed.toml");
    std::fs::write(
        &changed,
        read(config.clone()).replace("lr = 1e-3", "lr = 2e-3"),
    )
    .unwrap();
    let out = implicit(
        &data,
        &[
            "experiment",
            "run",
            changed.to_str().unwrap(),
            "--results",
            full.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/train was finished with other settings") && err.contains("lr: 0.001"),
        "{err}"
    );

    // 5. `experiment report` redraws the same tables from the artifacts alone.
    let before = read(full.join("tables/single_task.csv"));
    std::fs::remove_dir_all(full.join("tables")).unwrap();
    let out = implicit(&data, &["experiment", "report", full.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(full.join("tables/single_task.csv")), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_configs_are_errors_naming_the_line() {
    let dir = common::temp_dir("experiment-bad");
    let cases = [
        ("settings = [\"base\", \"instruction\", \"sft\"]\n", "line 1", "sft"),
        (
            "name = \"x\"\n[judge]\nlocal = \"j\"\n[[model]]\nname = \"m\"\npath = \"p\"\nlr = \"fast\"\n",
            "line 7",
            "`lr` must be a number, not \"fast\"",
        ),
        ("name = \"x\"\n[[model]]\nname = \"m\"\npath = \"p\"\n", "", "[judge]"),
        ("name = \"a/b\"\n", "line 1", "folder"),
        (
            "name = \"x\"\nname = \"y\"\n",
            "line 2",
            "key `name` is already set on line 1",
        ),
        (
            "[train]\nbatch_size = 8\nbatch_sise = 8\n",
            "line 3",
            "unknown key `batch_sise` in [train]",
        ),
    ];
    for (i, (text, line, what)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_implicit"))
            .args(["experiment", "run", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "case {i}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("error: ") && err.contains(path.to_str().unwrap()),
            "case {i}: {err}"
        );
        assert!(err.contains(line) && err.contains(what), "case {i}: {err}");
        assert!(!err.contains("panicked"), "case {i}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shipped_configs_parse() {
    let mut n = 0;
    for entry in std::fs::read_dir(crate_dir().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let cfg = implicit::experiment::ExperimentConfig::from_file(&path)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(
                !cfg.models.is_empty()
                    && cfg
                        .settings
                        .contains(&implicit::experiment::Setting::Instruction)
            );
            n += 1;
        }
    }
    assert!(
        n >= 3,
        "configs/ should hold smoke.toml and the two paper grids"
    );
    let paper = implicit::experiment::ExperimentConfig::from_file(
        &crate_dir().join("configs/paper-llama2-7b.toml"),
    )
    .unwrap();
    assert_eq!(paper.epochs, vec![5, 7, 10, 15, 20]);
    assert_eq!(paper.seeds.len(), 5);
    assert_eq!(paper.settings.len(), 12);
    assert_eq!(paper.train.recipe.batch_size, 64);
}

#[test]
fn generate_device_cuda_fails_up_front_without_a_gpu() {
    let dir = common::temp_dir("experiment-generate-device");
    let config = dir.join("gpu.toml");
    std::fs::write(
        &config,
        "name = \"gpu\"\nsettings = [\"base\", \"instruction\"]\n[generate]\ndevice = \"cuda\"\n\
         [judge]\nlocal = \"no-judge\"\n[[model]]\nname = \"m\"\npath = \"no-model\"\nlr = 1e-5\n",
    )
    .unwrap();
    let results = dir.join("results");
    let out = Command::new(env!("CARGO_BIN_EXE_implicit"))
        .args(["experiment", "run", config.to_str().unwrap(), "--results"])
        .arg(&results)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let line = errors[0];
    if cfg!(feature = "cuda") && !line.contains("[generate] device") {
        // A GPU opened: the run went on and failed on the missing model.
        assert!(line.contains("no-model"), "{err}");
    } else {
        let why = if cfg!(feature = "cuda") {
            "no usable GPU"
        } else {
            "built without CUDA"
        };
        assert!(
            line.contains("[generate] device = \"cuda\"") && line.contains(why),
            "{err}"
        );
        assert!(
            !results.exists(),
            "nothing is written before the device check"
        );
    }

    // The key is checked, and the paper grids generate on the GPU.
    let bad = std::fs::read_to_string(&config)
        .unwrap()
        .replace("device = \"cuda\"", "device = \"tpu\"");
    let e = implicit::experiment::ExperimentConfig::parse(&bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 4") && e.contains("tpu"), "{e}");
    for paper in ["paper-llama2-7b", "paper-olmo-7b"] {
        let path = crate_dir().join(format!("configs/{paper}.toml"));
        let cfg = implicit::experiment::ExperimentConfig::from_file(&path).unwrap();
        assert_eq!(
            cfg.generate.device,
            implicit::backend::Device::Cuda,
            "{paper}"
        );
    }
    let smoke =
        implicit::experiment::ExperimentConfig::from_file(&crate_dir().join("configs/smoke.toml"))
            .unwrap();
    assert_eq!(smoke.generate.device, implicit::backend::Device::Cpu);
    std::fs::remove_dir_all(&dir).unwrap();
}
