//! The GPU check works wherever the repository lies: the GPU machine runs binaries built here
//! (tools/build_gpu_binaries.sh) from a copy of the checkout at another path, so neither
//! tools/gpu_check.sh nor the test binaries' path helpers (tests/common/mod.rs) may lead back to
//! this checkout. Runs without the `cuda` feature: gpu_check.sh's DRY_RUN=1 touches no GPU.
#![cfg(unix)]

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CHECKOUT: &str = env!("CARGO_MANIFEST_DIR");
const ALL_STEPS: &str = "smi,kernels,model,train,mma,sdpa,bench,generate,serve,trainbench,paper";
const TEST_BINARIES: [&str; 4] = ["cuda_kernels", "cuda_model", "cuda_train", "cuda_generate"];
const DATA_FILES: [&str; 2] = ["models/stories260k-f32.gguf", "lima/lima_data.jsonl"];

/// Copies what the device tool copies to the GPU machine: the files git tracks and the untracked
/// ones it does not ignore. None when git cannot list them (not a checkout).
fn copy_checkout(to: &Path) -> Option<usize> {
    let listed = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(CHECKOUT)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let mut copied = 0;
    for name in listed.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).expect("a file name that is not UTF-8");
        let from = Path::new(CHECKOUT).join(name);
        // Tracked but deleted in the working tree: the device tool cannot copy it either.
        if !from.is_file() {
            continue;
        }
        let to = to.join(name);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap();
        copied += 1;
    }
    Some(copied)
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A stand-in for a binary of build_gpu_binaries.sh: a script that accepts gpu_check's
/// `--version` and `--list` (the real ones take minutes to build with CUDA).
fn stand_in_binary(path: &Path) {
    write(path, "#!/bin/sh\nexit 0\n");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `bash SCRIPT ARGS` started in `cwd`, with none of the variables that could lead gpu_check.sh
/// to this checkout (cargo's LD_LIBRARY_PATH names its target folder) and `env` added.
fn bash(script: &Path, args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new("bash");
    command.arg(script).args(args).current_dir(cwd);
    for name in [
        "IMPLICIT_BIN",
        "IMPLICIT_FIXTURES",
        "IMPLICIT_DATA",
        "IMPLICIT_COMMIT",
        "OUT",
        "STEPS",
        "MODEL_DIR",
        "DRY_RUN",
        "LD_LIBRARY_PATH",
        "IMPLICIT_GEMM",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let output = command.output().unwrap();
    println!(
        "$ (cd {}; {} bash {} {})\n{}{}-> {}",
        cwd.display(),
        env.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        script.display(),
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        output.status
    );
    output
}

/// A stand-in of what the GPU machine holds: `root/repo`, a copy of the checkout as the device
/// tool makes it, with `target/gpu` packed by build_gpu_binaries.sh's own --pack from stand-in
/// binaries in `root/build` and stand-in data in `root/data`; `root/model` for step "generate";
/// `root/elsewhere`, a folder outside the repository to start from. None without git.
fn gpu_machine(root: &Path) -> Option<PathBuf> {
    let repo = root.join("repo");
    let Some(copied) = copy_checkout(&repo) else {
        eprintln!("SKIPPED: git cannot list the files of {CHECKOUT}");
        return None;
    };
    println!("copied {copied} files of {CHECKOUT} to {}", repo.display());
    for name in std::iter::once("implicit").chain(TEST_BINARIES) {
        stand_in_binary(&root.join("build").join(name));
    }
    for file in DATA_FILES {
        write(&root.join("data").join(file), "stand-in\n");
    }
    // The Llama-2 tokenizer step "serve" gives a model folder without one.
    for file in ["llama2-tokenizer.json", "llama2-tokenizer_config.json"] {
        write(&root.join("data/tokenizers").join(file), "{}\n");
    }
    write(&root.join("model/config.json"), "{}\n");
    std::fs::create_dir_all(root.join("elsewhere")).unwrap();
    pack(root);
    Some(repo)
}

/// build_gpu_binaries.sh --pack of root/build, started outside the repository.
fn pack(root: &Path) {
    let data = root.join("data");
    let run = bash(
        &root.join("repo/tools/build_gpu_binaries.sh"),
        &["--pack", "../build"],
        &root.join("elsewhere"),
        &[("IMPLICIT_DATA", data.to_str().unwrap())],
    );
    assert!(run.status.success(), "build_gpu_binaries.sh --pack failed");
    // --pack downloads no wheels (no network in tests): a stand-in for the openai client's.
    write(
        &root.join("repo/target/gpu/wheels/openai-0.0.0-py3-none-any.whl"),
        "stand-in\n",
    );
}

/// One `gpu_check: check STATE NAME PATH` line of the dry run.
struct Checked {
    state: String,
    name: String,
    path: String,
}

fn checked(stdout: &str) -> Vec<Checked> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("gpu_check: check "))
        .map(|rest| {
            let mut words = rest.split_whitespace();
            let state = words.next().unwrap().to_string();
            let name = words.next().unwrap().to_string();
            let path = words.collect::<Vec<_>>().join(" ");
            Checked { state, name, path }
        })
        .collect()
}

/// What the dry run must check for ALL_STEPS with MODEL_DIR set.
fn expected_checks() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = ["COMMIT", "implicit", "MODEL_DIR/config.json"]
        .into_iter()
        .chain(TEST_BINARIES)
        .chain([
            "tools/bench_sdpa.py",
            "tools/bench_generate_torch.py",
            "tools/serve_bench.py",
            "tokenizers/llama2",
            "wheels",
            "tools/bench_train_torch.py",
            "configs/models/llama2-7b.json",
        ])
        .map(String::from)
        .collect();
    for fixture in ["llama-gqa", "olmo"] {
        for file in ["config.json", "model.safetensors"] {
            names.insert(format!("fixtures/{fixture}/{file}"));
        }
    }
    names.extend(DATA_FILES.iter().map(|f| format!("data/{f}")));
    names
}

/// The dry run passed, checked everything, and every path it printed lies under `root`: none
/// leads back to this checkout.
fn assert_everything_under(run: &Output, root: &Path) -> String {
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert_eq!(run.status.code(), Some(0), "the dry run failed");
    let root = root.to_str().unwrap();
    let checks = checked(&stdout);
    for c in &checks {
        assert_eq!(c.state, "ok", "{}: {} is {}", c.name, c.path, c.state);
        assert!(
            c.path.starts_with(root),
            "{}: {} is outside {root}",
            c.name,
            c.path
        );
    }
    let names: BTreeSet<String> = checks.iter().map(|c| c.name.clone()).collect();
    assert_eq!(names, expected_checks(), "the paths the dry run checked");
    let mut printed = 0;
    for line in stdout.lines() {
        let path = if let Some(rest) = line.strip_prefix("gpu_check: path ") {
            rest.split_once(' ').map(|(_, path)| path)
        } else if let Some(rest) = line.strip_prefix("gpu_check: env ") {
            rest.split_once('=').map(|(_, value)| value)
        } else {
            None
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            assert!(path.starts_with(root), "{line}: outside {root}");
            printed += 1;
        }
    }
    // repository, carried, unpacked, OUT, MODEL_DIR, IMPLICIT_BIN, _FIXTURES, _DATA.
    assert_eq!(printed, 8, "the paths and variables the dry run printed");
    if !root.starts_with(CHECKOUT) {
        let all = format!("{stdout}{}", String::from_utf8_lossy(&run.stderr));
        assert!(!all.contains(CHECKOUT), "the dry run names {CHECKOUT}");
    }
    stdout
}

#[test]
fn gpu_check_dry_run_finds_everything_in_the_copy_from_any_folder() {
    let root = common::temp_dir("gpu-check-dry-run");
    let Some(repo) = gpu_machine(&root) else {
        return;
    };
    let model = root.join("model");
    let env = [
        ("DRY_RUN", "1"),
        ("STEPS", ALL_STEPS),
        ("MODEL_DIR", model.to_str().unwrap()),
    ];
    // From a folder outside the repository, the script named by its absolute path.
    let script = repo.join("tools/gpu_check.sh");
    let run = bash(&script, &[], &root.join("elsewhere"), &env);
    let stdout = assert_everything_under(&run, &root);
    let unpacked = repo.join("target/gpu-run");
    for (name, value) in [
        ("IMPLICIT_BIN", unpacked.join("implicit")),
        ("IMPLICIT_FIXTURES", repo.join("target/gpu/fixtures")),
        ("IMPLICIT_DATA", repo.join("target/gpu/data")),
    ] {
        let line = format!("gpu_check: env {name}={}", value.display());
        assert!(stdout.lines().any(|l| l == line), "no line {line:?}");
    }
    // From the script's own folder, by a relative name; a relative OUT is the caller's.
    let mut env_out = env.to_vec();
    env_out.push(("OUT", "results"));
    let tools = repo.join("tools");
    let run = bash(Path::new("gpu_check.sh"), &[], &tools, &env_out);
    let stdout = assert_everything_under(&run, &root);
    let line = format!("gpu_check: path OUT {}", tools.join("results").display());
    assert!(stdout.lines().any(|l| l == line), "no line {line:?}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn gpu_check_dry_run_names_each_missing_piece() {
    let root = common::temp_dir("gpu-check-missing");
    let Some(repo) = gpu_machine(&root) else {
        return;
    };
    // An archive without cuda_generate, a fixture and a data file lost on the way, a tool
    // absent from the checkout.
    std::fs::remove_file(root.join("build/cuda_generate")).unwrap();
    pack(&root);
    let lost = [
        ("cuda_generate", repo.join("target/gpu-run/cuda_generate")),
        (
            "fixtures/olmo/model.safetensors",
            repo.join("target/gpu/fixtures/olmo/model.safetensors"),
        ),
        (
            "data/lima/lima_data.jsonl",
            repo.join("target/gpu/data/lima/lima_data.jsonl"),
        ),
        (
            "tokenizers/llama2",
            repo.join("target/gpu/data/tokenizers/llama2/tokenizer.json"),
        ),
        (
            "tools/bench_train_torch.py",
            repo.join("tools/bench_train_torch.py"),
        ),
    ];
    for (_, path) in &lost[1..] {
        std::fs::remove_file(path).unwrap();
    }
    let model = root.join("model");
    let env = [
        ("DRY_RUN", "1"),
        ("STEPS", ALL_STEPS),
        ("MODEL_DIR", model.to_str().unwrap()),
    ];
    let run = bash(
        &repo.join("tools/gpu_check.sh"),
        &[],
        &root.join("elsewhere"),
        &env,
    );
    assert_eq!(run.status.code(), Some(2), "the dry run must fail");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let not_ok: Vec<(String, String)> = checked(&stdout)
        .into_iter()
        .filter(|c| c.state != "ok")
        .map(|c| (c.name, c.path))
        .collect();
    let want: Vec<(String, String)> = lost
        .iter()
        .map(|(name, path)| (name.to_string(), path.display().to_string()))
        .collect();
    assert_eq!(not_ok, want, "what the dry run found missing");
    for (name, path) in &want {
        let line = format!("  {name}: {path} (MISSING)");
        assert!(stdout.lines().any(|l| l == line), "no line {line:?}");
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// Prints where the path helpers lead and checks the files are there. In a plain `cargo test`
/// that is this checkout; `path_helpers_follow_the_environment` runs it with the variables
/// gpu_check.sh exports.
#[test]
fn path_helpers_lead_to_the_fixtures_and_the_binary() {
    let fixtures = common::fixtures();
    let bin = common::implicit_bin();
    let data = common::data_dir("path-helpers");
    // On a line of its own: libtest's "test NAME ... " precedes it without a line break.
    println!("\nfixtures={}", fixtures.display());
    println!("implicit_bin={}", bin.display());
    println!(
        "data={}",
        data.map_or("none".into(), |d| d.display().to_string())
    );
    let config = fixtures.join("llama-gqa/config.json");
    assert!(config.is_file(), "{}: absent", config.display());
    assert!(bin.is_file(), "{}: absent", bin.display());
}

#[test]
fn path_helpers_follow_the_environment() {
    let root = common::temp_dir("gpu-check-path-helpers");
    let fixtures = root.join("fixtures");
    let bin = root.join("bin/implicit");
    let data = root.join("data");
    write(&fixtures.join("llama-gqa/config.json"), "{}\n");
    stand_in_binary(&bin);
    std::fs::create_dir_all(&data).unwrap();
    let elsewhere = root.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    // This test binary again, started in another folder, running only the test above.
    let helpers = |env: &[(&str, &Path)]| {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--exact",
                "path_helpers_lead_to_the_fixtures_and_the_binary",
                "--nocapture",
                "--test-threads=1",
            ])
            .current_dir(&elsewhere);
        for name in ["IMPLICIT_FIXTURES", "IMPLICIT_BIN", "IMPLICIT_DATA"] {
            command.env_remove(name);
        }
        command.envs(env.iter().copied());
        let run = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
        println!("{stdout}{}", String::from_utf8_lossy(&run.stderr));
        assert!(run.status.success(), "{env:?}: the helpers' test failed");
        stdout
    };
    let stdout = helpers(&[
        ("IMPLICIT_FIXTURES", &fixtures),
        ("IMPLICIT_BIN", &bin),
        ("IMPLICIT_DATA", &data),
    ]);
    for line in [
        format!("fixtures={}", fixtures.display()),
        format!("implicit_bin={}", bin.display()),
        format!("data={}", data.display()),
    ] {
        assert!(stdout.lines().any(|l| l == line), "no line {line:?}");
    }
    // Empty is unset: the compiled-in paths.
    let stdout = helpers(&[
        ("IMPLICIT_FIXTURES", Path::new("")),
        ("IMPLICIT_BIN", Path::new("")),
    ]);
    for line in [
        format!("fixtures={CHECKOUT}/tests/fixtures"),
        format!("implicit_bin={}", env!("CARGO_BIN_EXE_implicit")),
    ] {
        assert!(stdout.lines().any(|l| l == line), "no line {line:?}");
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// Step "serve" with a stand-in `implicit` whose server never listens: one that exits at once
/// and one that hangs. Each is reported as the step's failure, within seconds, and what the
/// server was started with (the GPU, the batch of 64, the model folder given the carried
/// tokenizer) is what the step promises.
#[test]
fn gpu_check_serve_step_reports_a_server_that_does_not_start() {
    let root = common::temp_dir("gpu-check-serve");
    let Some(repo) = gpu_machine(&root) else {
        return;
    };
    let args_file = root.join("serve-args");
    let stand_in = |serve: &str| {
        let path = root.join("build/implicit");
        write(
            &path,
            &format!(
                "#!/bin/sh\nif [ \"$1\" = serve ]; then\n    echo \"$@\" > '{}'\n{serve}\nfi\nexit 0\n",
                args_file.display()
            ),
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        pack(&root);
    };
    let model = root.join("model");
    let out = root.join("out");
    let env = [
        ("STEPS", "serve"),
        ("MODEL_DIR", model.to_str().unwrap()),
        ("OUT", out.to_str().unwrap()),
        ("SERVE_START_LIMIT", "3"),
    ];
    let script = repo.join("tools/gpu_check.sh");
    for (serve, why) in [
        (
            "    echo 'error: --device cuda: no CUDA device' >&2\n    exit 1",
            "the server stopped (rc 1) before listening",
        ),
        ("    exec sleep 60", "the server did not listen within 3 s"),
    ] {
        stand_in(serve);
        let _ = std::fs::remove_file(&args_file);
        let t0 = std::time::Instant::now();
        let run = bash(&script, &[], &root.join("elsewhere"), &env);
        let took = t0.elapsed();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert_eq!(
            run.status.code(),
            Some(1),
            "the step's failure is the exit code"
        );
        assert!(took.as_secs() < 60, "{why}: took {took:?}");
        assert!(
            stdout.lines().any(|l| l.starts_with("serve: rc 1")),
            "{why}: no step line"
        );
        assert!(
            stdout.contains(&format!("serve: failed: {why}")),
            "{why}: not in the summary"
        );
        let serve_model = repo.join("target/gpu-run/serve-model");
        let args = std::fs::read_to_string(&args_file).expect("the server was started");
        for want in [
            "--device cuda".to_string(),
            format!("--model {}", serve_model.display()),
            "--max-batch 64".to_string(),
        ] {
            assert!(args.contains(&want), "{args:?} lacks {want:?}");
        }
        // The model's own files linked, the carried tokenizer beside them.
        assert!(std::fs::symlink_metadata(serve_model.join("config.json"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(serve_model.join("tokenizer.json").is_file());
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// Step "kernels" when the wgmma tests fail: the 1-block wgmma tests (without "multicast") run
/// again under IMPLICIT_GEMM=wgmma-nocluster, and the later steps keep that value if they pass,
/// or fall back to IMPLICIT_GEMM=mma if they fail too. A stand-in cuda_kernels fails the plain
/// wgmma filter, answers the nocluster rerun with the given status, and records each call.
#[test]
fn gpu_check_falls_back_to_the_wgmma_kernels_without_clusters() {
    let root = common::temp_dir("gpu-check-wgmma-fallback");
    let Some(repo) = gpu_machine(&root) else {
        return;
    };
    let calls = root.join("cuda-kernels-calls");
    let script = repo.join("tools/gpu_check.sh");
    for (rerun_rc, want) in [(0, "wgmma-nocluster"), (1, "mma")] {
        let path = root.join("build/cuda_kernels");
        write(
            &path,
            &format!(
                "#!/bin/sh\necho \"IMPLICIT_GEMM=$IMPLICIT_GEMM $*\" >> '{}'\n\
                 if [ \"$*\" = '--nocapture --test-threads=1 wgmma' ]; then exit 1; fi\n\
                 if [ \"$*\" = '--nocapture --test-threads=1 --skip multicast wgmma' ]; then \
                 exit {rerun_rc}; fi\nexit 0\n",
                calls.display()
            ),
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        pack(&root);
        let _ = std::fs::remove_file(&calls);
        let out = root.join(format!("out-{rerun_rc}"));
        let env = [("STEPS", "kernels"), ("OUT", out.to_str().unwrap())];
        let run = bash(&script, &[], &root.join("elsewhere"), &env);
        // steps.txt goes into logs.tar.gz at the end; its lines are on stdout too.
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            stdout.contains(&format!("later steps run with IMPLICIT_GEMM={want}")),
            "rerun rc {rerun_rc}: no fallback line in {stdout}"
        );
        let calls = std::fs::read_to_string(&calls).unwrap();
        let lines: Vec<&str> = calls.lines().collect();
        assert!(
            lines.contains(&"IMPLICIT_GEMM=wgmma-nocluster --nocapture --test-threads=1 --skip multicast wgmma"),
            "no nocluster rerun: {lines:?}"
        );
        // The remaining kernel tests ran under the chosen value.
        let rest = lines
            .iter()
            .find(|l| l.contains("--skip wgmma --skip hopper"))
            .unwrap_or_else(|| panic!("no cuda_kernels step: {lines:?}"));
        assert!(
            rest.starts_with(&format!("IMPLICIT_GEMM={want} ")),
            "{rest}"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}
