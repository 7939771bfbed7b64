//! Tests of `bench generate`'s arithmetic, argument checks, table and JSON (no GPU needed).

use super::*;

/// `bench generate --model M`'s options: the command line's defaults (cli::bench's tests check
/// that no flags give these).
fn defaults() -> GenerateBenchOptions {
    GenerateBenchOptions {
        model: "M".into(),
        batch_sizes: vec![1, 64],
        prompt_len: 128,
        new_tokens: 128,
        seed: 0,
        torch: None,
        no_cuda_graphs: false,
        json: None,
    }
}

/// The defaults, edited.
fn with(edit: impl FnOnce(&mut GenerateBenchOptions)) -> GenerateBenchOptions {
    let mut o = defaults();
    edit(&mut o);
    o
}

fn llama7b() -> ModelConfig {
    ModelConfig::from_json(
        r#"{"model_type":"llama","vocab_size":32000,"hidden_size":4096,
        "intermediate_size":11008,"num_hidden_layers":32,"num_attention_heads":32,
        "num_key_value_heads":32,"max_position_embeddings":4096,"eos_token_id":2}"#,
    )
    .unwrap()
}

#[test]
fn defaults_and_bad_arguments() {
    let p = plan(&defaults()).unwrap();
    assert_eq!(p.batch_sizes, vec![1, 64]);
    assert_eq!(
        (
            p.prompt_len,
            p.new_tokens,
            p.decode_steps,
            p.seed,
            p.cuda_graphs
        ),
        (128, 128, 127, 0, true)
    );
    assert!(
        !plan(&with(|o| o.no_cuda_graphs = true))
            .unwrap()
            .cuda_graphs
    );
    let err = |edit: fn(&mut GenerateBenchOptions)| plan(&with(edit)).unwrap_err().to_string();
    assert!(err(|o| o.batch_sizes = vec![1, 0]).contains("--batch-sizes 0"));
    assert!(err(|o| o.batch_sizes = vec![2000]).contains("1 to 1024"));
    assert!(err(|o| o.batch_sizes = vec![4, 4]).contains("4 is given twice"));
    assert!(err(|o| o.prompt_len = 0).contains("--prompt-len"));
    assert!(err(|o| o.new_tokens = 1).contains("at least 2"));
    let p = plan(&with(|o| (o.prompt_len, o.new_tokens) = (4000, 97))).unwrap();
    let e = check_fits(&p, &llama7b(), Path::new("M"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("4097 positions") && e.contains("4096"), "{e}");
}

#[test]
fn prompts_are_seeded_and_avoid_eos() {
    let a = prompt_ids(0, 3, 50, 5, &[2]);
    assert_eq!(a, prompt_ids(0, 3, 50, 5, &[2]));
    assert_ne!(a, prompt_ids(1, 3, 50, 5, &[2]));
    assert!(a.iter().flatten().all(|&t| t < 5 && t != 2));
    assert_eq!(prompt_ids(0, 1, 50, 5, &[2])[0], a[0]);
    // Pinned: tools/bench_generate_torch.py's prompt_ids must give the same ids.
    assert_eq!(
        prompt_ids(0, 2, 6, 32000, &[2]),
        vec![
            vec![4048, 9725, 2193, 13820, 13046, 17999],
            vec![15701, 827, 4589, 3590, 7086, 25212]
        ]
    );
}

#[test]
fn bytes_of_a_7b_step() {
    let c = llama7b();
    assert_eq!(c.num_parameters(), 6_738_415_616);
    // 2 bytes per parameter but the norms' 4.
    let norms = 4096.0 * 65.0;
    assert_eq!(device_weight_bytes(&c), 2.0 * 6_738_415_616.0 + 2.0 * norms);
    let s = step_bytes(&c, 64, 128, 128);
    // The embedding is read for 64 rows only.
    let expected = device_weight_bytes(&c) - 2.0 * 32000.0 * 4096.0 + 2.0 * 64.0 * 4096.0;
    assert_eq!(s.weights, expected);
    // 64 sequences × 32 layers × 4096 × (K, V) × bf16 × (128 + 1 + 64) positions.
    assert_eq!(s.kv_mean, 64.0 * 32.0 * 4096.0 * 4.0 * 193.0);
}

fn measured() -> Measured {
    Measured {
        prefill_s: 0.5,
        forward_s: vec![0.010, 0.012, 0.011],
        pick_s: vec![0.001, 0.001, 0.002],
        first_tokens: vec![5, 6, 7, 8],
        peak_memory_bytes: Some(20 << 30),
    }
}

fn report(results: Vec<BatchResult>, torch: Option<(TorchFile, serde_json::Value)>) -> Report {
    let (torch_parsed, torch) = torch.unzip();
    Report {
        schema: SCHEMA,
        device: "Test GPU".into(),
        device_info: serde_json::json!({"name": "Test GPU"}),
        commit: "abc".into(),
        date: "2026-01-01T00:00:00Z".into(),
        command: "implicit bench generate --model M".into(),
        config: ReportConfig {
            model: "M".into(),
            plan: plan(&with(|o| o.new_tokens = 4)).unwrap(),
            shape: model_shape(&llama7b()),
            torch_file: None,
        },
        copy_ceiling: Some(serde_json::json!({"gb_s": 3000.0})),
        copy_gb_s: Some(3000.0),
        load: Some(LoadResult {
            files: 2,
            bytes_on_disk: 13_500_000_000,
            device_bytes: 13.48e9,
            loads: vec![
                load_timing("first", true, Some(0.0), 10.0, 13_500_000_000),
                load_timing("second", false, Some(1.0), 4.5, 13_500_000_000),
            ],
        }),
        results,
        torch,
        torch_parsed,
        error: None,
    }
}

#[test]
fn summary_figures() {
    let p = plan(&with(|o| o.new_tokens = 4)).unwrap();
    let bytes = step_bytes(&llama7b(), 2, 128, 4);
    let r = summarize(2, &p, bytes, &measured(), Some(3000.0));
    let pre = r.prefill.as_ref().unwrap();
    assert_eq!(pre.tokens, 256);
    assert!((pre.tokens_per_s - 512.0).abs() < 1e-9);
    let d = r.decode.as_ref().unwrap();
    assert_eq!((d.steps, d.tokens), (3, 6));
    assert!((d.seconds - 0.037).abs() < 1e-12);
    assert!((d.tokens_per_s - 6.0 / 0.037).abs() < 1e-6);
    // Steps of 11, 13 and 13 ms (forward + choice).
    assert!((d.step_ms.median - 13.0).abs() < 1e-9);
    assert!((d.step_ms.min - 11.0).abs() < 1e-9 && (d.step_ms.max - 13.0).abs() < 1e-9);
    let bw = r.bandwidth.as_ref().unwrap();
    assert!((bw.weights_gb_s - bytes.weights / 0.011 / 1e9).abs() < 1e-6);
    assert!((bw.weights_of_copy.unwrap() - bw.weights_gb_s / 3000.0).abs() < 1e-12);
    assert!(bw.with_kv_gb_s > bw.weights_gb_s);
    // The floor: the step's weight bytes at 3000 GB/s; the median step is 13 ms.
    let floor = bytes.weights / 3000e9 * 1e3;
    assert!((bw.floor_ms.unwrap() - floor).abs() < 1e-9);
    assert!((bw.step_of_floor.unwrap() - floor / 13.0).abs() < 1e-12);
    let text = render(&report(vec![r.clone()], None));
    let want = format!(
        "batch 2: step 13.00 ms against a floor of {floor:.2} ms ({:.2} GB of weights at the copy bandwidth): {:.0}% of the floor",
        bytes.weights / 1e9,
        100.0 * floor / 13.0
    );
    assert!(text.contains(&want), "{text}");
    let json = serde_json::to_value(&r).unwrap();
    assert!((json["bandwidth"]["floor_ms"].as_f64().unwrap() - floor).abs() < 1e-9);
    // Without a measured copy ceiling there is no floor.
    let none = summarize(2, &p, bytes, &measured(), None);
    let bw = none.bandwidth.unwrap();
    assert_eq!((bw.floor_ms, bw.step_of_floor), (None, None));
    assert_eq!(floor_ms(1e9, Some(0.0)), None);
    assert_eq!(spread(&[], 1.0), None);
    assert_eq!(
        spread(&[4.0, 1.0, 3.0, 2.0], 2.0),
        Some(Spread {
            median: 5.0,
            min: 2.0,
            max: 8.0
        })
    );
}

fn torch_json() -> String {
    r#"{"schema":"implicit-bench-generate-torch/1","device":"Test GPU","torch":"2.9.0",
    "transformers":"4.57.1","config":{"prompt_len":128,"new_tokens":4,"seed":0},
    "load":{"loads":[{"label":"first","page_cache":"cold","seconds":20.0,"gb_s":0.675}]},
    "results":[{"batch":1,"prefill":{"tokens":128,"seconds":0.05,"tokens_per_s":2560.0},
      "decode":{"steps":3,"tokens":3,"seconds":0.06,"tokens_per_s":50.0,
                "step_ms":{"median":20.0,"min":19.0,"max":21.0}},
      "first_tokens":[5,6,9,9]},
      {"batch":64,"error":"OutOfMemoryError: CUDA out of memory"}],
    "results_static_compile":[{"batch":1,
      "prefill":{"tokens":128,"seconds":0.04,"tokens_per_s":3200.0},
      "decode":{"steps":3,"tokens":3,"seconds":0.03,"tokens_per_s":100.0,
                "step_ms":{"median":10.0,"min":9.0,"max":11.0}},
      "first_tokens":[5,6,9,9],"warmup_s":61.5}]}"#
        .into()
}

#[test]
fn torch_file_is_checked_and_attached() {
    let dir = std::env::temp_dir().join(format!("implicit-bgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("torch.json");
    std::fs::write(&path, torch_json()).unwrap();
    let p4 = plan(&with(|o| o.new_tokens = 4)).unwrap();
    let torch = read_torch(&path, &p4).unwrap();
    let e = read_torch(&path, &plan(&defaults()).unwrap()).unwrap_err();
    assert!(e.to_string().contains("4 new tokens"), "{e}");
    std::fs::write(&path, "{\"results\": 3}").unwrap();
    let e = read_torch(&path, &p4).unwrap_err().to_string();
    assert!(
        e.contains("not tools/bench_generate_torch.py's JSON"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let c = llama7b();
    let mut results = vec![
        summarize(1, &p4, step_bytes(&c, 1, 128, 4), &measured(), Some(3000.0)),
        BatchResult::failed(64, step_bytes(&c, 64, 128, 4), "out of memory".into()),
        summarize(8, &p4, step_bytes(&c, 8, 128, 4), &measured(), None),
    ];
    attach_torch(&mut results, &torch.0, 0);
    let vs = results[0].vs_torch.as_ref().unwrap();
    assert!((vs.decode_speedup.unwrap() - (3.0 / 0.037) / 50.0).abs() < 1e-9);
    assert!((vs.prefill_speedup.unwrap() - 256.0 / 2560.0).abs() < 1e-9);
    assert_eq!((vs.first_tokens_agree, vs.first_tokens_compared), (2, 4));
    assert!(results[1].torch.as_ref().unwrap().error.is_some());
    let mut other_seed = results.clone();
    attach_torch(&mut other_seed, &torch.0, 1);
    let vs = other_seed[0].vs_torch.as_ref().unwrap();
    assert_eq!((vs.first_tokens_agree, vs.first_tokens_compared), (0, 0));
    assert!(results[2].torch.is_none());
    // The fast recipe's row beside the plain one, at batch 1 only.
    let fast = results[0].vs_torch_static_compile.as_ref().unwrap();
    assert!((fast.decode_speedup.unwrap() - (3.0 / 0.037) / 100.0).abs() < 1e-9);
    assert!((fast.prefill_speedup.unwrap() - 256.0 / 3200.0).abs() < 1e-9);
    assert!(results[1].torch_static_compile.is_none());

    let r = report(results, Some(torch));
    let text = render(&r);
    println!("{text}");
    assert!(text.contains("copy ceiling 3000 GB/s"), "{text}");
    assert!(
        text.contains("cold (0% cached) after posix_fadvise(DONTNEED)"),
        "{text}"
    );
    assert!(text.contains("torch    first"), "{text}");
    assert!(text.contains("   64 error: out of memory"), "{text}");
    assert!(text.contains("torch error: OutOfMemoryError"), "{text}");
    assert!(
        text.contains("no torch figures for this batch size"),
        "{text}"
    );
    assert!(text.contains("2/4"), "{text}");
    assert!(
        text.contains("vs transformers generate with a static cache and torch.compile"),
        "{text}"
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["schema"], SCHEMA);
    assert_eq!(json["config"]["prompt_len"], 128);
    assert_eq!(json["config"]["decode_steps"], 3);
    assert_eq!(json["config"]["cuda_graphs"], true);
    assert_eq!(json["config"]["shape"]["parameters"], 6_738_415_616u64);
    assert_eq!(json["load"]["loads"][1]["label"], "second");
    assert_eq!(json["results"][0]["decode"]["steps"], 3);
    assert!(json["results"][0]["vs_torch"]["decode_speedup"].is_number());
    assert!(json["results"][0]["vs_torch_static_compile"]["decode_speedup"].is_number());
    assert_eq!(json["results"][1]["error"], "out of memory");
    assert!(json["results"][2]["bandwidth"]["weights_of_copy"].is_null());
    assert_eq!(json["torch"]["torch"], "2.9.0");
    assert!(json.get("torch_parsed").is_none());
    for key in ["device", "commit", "date", "command", "copy_gb_s", "error"] {
        assert!(json.get(key).is_some(), "{key}");
    }
}

#[test]
fn table_without_torch_or_load() {
    let p = plan(&with(|o| o.new_tokens = 4)).unwrap();
    let bytes = step_bytes(&llama7b(), 1, 128, 4);
    let mut r = report(
        vec![summarize(1, &p, bytes, &measured(), Some(3000.0))],
        None,
    );
    r.load = None;
    r.copy_gb_s = None;
    r.error = Some("stopped".into());
    let text = render(&r);
    assert!(text.contains("copy ceiling not measured"), "{text}");
    assert!(!text.contains("vs transformers"), "{text}");
    assert!(text.ends_with("error: stopped\n"), "{text}");
    assert_eq!(
        page_cache_words(false, Some(0.5)),
        "partly cached (50%)".to_string()
    );
    assert_eq!(page_cache_words(false, None), "warm (loaded just before)");
}
