//! The table and JSON of `bench generate`.

#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use super::*;

/// The JSON document (schema [`SCHEMA`]).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub device: String,
    /// `bench kernels`' device description (SMs, driver, memory, ...).
    pub device_info: serde_json::Value,
    pub commit: String,
    pub date: String,
    pub command: String,
    pub config: ReportConfig,
    /// The device-to-device copy (bench kernels' ceiling): bytes read + written, GB/s, timing.
    pub copy_ceiling: Option<serde_json::Value>,
    pub copy_gb_s: Option<f64>,
    pub load: Option<LoadResult>,
    pub results: Vec<BatchResult>,
    /// tools/bench_generate_torch.py's whole JSON.
    pub torch: Option<serde_json::Value>,
    #[serde(skip)]
    pub torch_parsed: Option<TorchFile>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReportConfig {
    pub model: String,
    #[serde(flatten)]
    pub plan: Plan,
    /// Layers, widths, heads, vocabulary, parameters of config.json.
    pub shape: serde_json::Value,
    pub torch_file: Option<String>,
}

/// config.json's shape, for the report.
pub fn model_shape(c: &ModelConfig) -> serde_json::Value {
    serde_json::json!({
        "architecture": match c.arch { Architecture::Llama => "llama", Architecture::Olmo => "olmo" },
        "layers": c.num_layers,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "heads": c.num_heads,
        "kv_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "parameters": c.num_parameters(),
    })
}

fn gb(bytes: f64) -> String {
    format!("{:.2} GB", bytes / 1e9)
}

fn of_copy(f: Option<f64>) -> String {
    f.map_or(String::new(), |f| format!(" ({:.0}%)", 100.0 * f))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The printed table.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    let p = &r.config.plan;
    line(format!(
        "bench generate: {} ({:.2}B parameters); prompts of {} tokens, {} new tokens ({} \
         decode steps{}), seed {}",
        r.config.model,
        r.config.shape["parameters"].as_f64().unwrap_or(f64::NAN) / 1e9,
        p.prompt_len,
        p.new_tokens,
        p.decode_steps,
        if p.cuda_graphs {
            ", each a CUDA graph"
        } else {
            ", launched kernel by kernel"
        },
        p.seed
    ));
    line(format!(
        "device: {}; copy ceiling {}",
        r.device,
        r.copy_gb_s.map_or("not measured".into(), |c| format!(
            "{c:.0} GB/s (read + written)"
        ))
    ));
    let torch = r.torch_parsed.as_ref();
    if let Some(load) = &r.load {
        line(format!(
            "load: {} on disk in {} file(s), {} on the GPU",
            gb(load.bytes_on_disk as f64),
            load.files,
            gb(load.device_bytes)
        ));
        let torch_loads = torch.and_then(|t| t.load.as_ref());
        let all = load.loads.iter().map(|l| ("implicit", l)).chain(
            torch_loads
                .into_iter()
                .flat_map(|t| t.loads.iter().map(|l| ("torch", l))),
        );
        for (who, l) in all {
            line(format!(
                "  {who:<8} {:<6} {:>8.2} s {:>7.2} GB/s  page cache: {}",
                l.label, l.seconds, l.gb_s, l.page_cache
            ));
        }
        if let Some(e) = torch_loads.and_then(|t| t.error.as_ref()) {
            line(format!("  torch    error: {e}"));
        }
    }
    line(format!(
        "{:>5} {:>13} {:>12} {:>24} {:>8} {:>8} {:>18} {:>18} {:>9}",
        "batch",
        "prefill tok/s",
        "decode tok/s",
        "step ms median (min-max)",
        "fwd ms",
        "pick ms",
        "weights GB/s",
        "+KV GB/s",
        "peak GiB"
    ));
    for b in &r.results {
        if let Some(e) = &b.error {
            line(format!("{:>5} error: {e}", b.batch));
            continue;
        }
        let d = b.decode.as_ref();
        let step = d.map_or("-".into(), |d| {
            format!(
                "{:.2} ({:.2}-{:.2})",
                d.step_ms.median, d.step_ms.min, d.step_ms.max
            )
        });
        let bw = b.bandwidth.as_ref();
        line(format!(
            "{:>5} {:>13} {:>12} {:>24} {:>8} {:>8} {:>18} {:>18} {:>9}",
            b.batch,
            opt(b.prefill.as_ref().map(|p| p.tokens_per_s), 1),
            opt(d.map(|d| d.tokens_per_s), 1),
            step,
            opt(d.and_then(|d| d.forward_ms).map(|s| s.median), 2),
            opt(d.and_then(|d| d.pick_ms).map(|s| s.median), 2),
            bw.map_or("-".into(), |w| format!(
                "{:.0}{}",
                w.weights_gb_s,
                of_copy(w.weights_of_copy)
            )),
            bw.map_or("-".into(), |w| format!(
                "{:.0}{}",
                w.with_kv_gb_s,
                of_copy(w.with_kv_of_copy)
            )),
            opt(
                b.peak_memory_bytes.map(|m| m as f64 / (1u64 << 30) as f64),
                1
            ),
        ));
    }
    // Each step against its floor: the weights read once at the copy bandwidth above.
    for b in &r.results {
        let (Some(d), Some(w)) = (b.decode.as_ref(), b.bandwidth.as_ref()) else {
            continue;
        };
        if let (Some(floor), Some(frac)) = (w.floor_ms, w.step_of_floor) {
            line(format!(
                "batch {}: step {:.2} ms against a floor of {:.2} ms ({:.2} GB of weights at the copy bandwidth): {:.0}% of the floor",
                b.batch,
                d.step_ms.median,
                floor,
                b.bytes_per_step.weights / 1e9,
                100.0 * frac
            ));
        }
    }
    if let Some(t) = torch {
        let recipes: [(&str, TorchColumns); 2] = [
            ("generate", |b| (b.torch.as_ref(), b.vs_torch.as_ref())),
            ("generate with a static cache and torch.compile", |b| {
                (
                    b.torch_static_compile.as_ref(),
                    b.vs_torch_static_compile.as_ref(),
                )
            }),
        ];
        for (k, (recipe, pick)) in recipes.into_iter().enumerate() {
            // Older files and `--recipes plain` have no rows of the fast recipe.
            if k == 1 && t.results_static_compile.is_empty() {
                continue;
            }
            line(format!(
                "vs transformers {recipe} (torch {}, transformers {}, {}): implicit / torch",
                t.torch.as_deref().unwrap_or("?"),
                t.transformers.as_deref().unwrap_or("?"),
                t.device.as_deref().unwrap_or("?")
            ));
            line(format!(
                "{:>5} {:>15} {:>12} {:>8} {:>16} {:>13} {:>8} {:>15}",
                "batch",
                "decode implicit",
                "torch",
                "ratio",
                "prefill implicit",
                "torch",
                "ratio",
                "same 1st tokens"
            ));
            for b in &r.results {
                let (Some(tb), vs) = pick(b) else {
                    line(format!(
                        "{:>5} (no torch figures for this batch size)",
                        b.batch
                    ));
                    continue;
                };
                if let Some(e) = &tb.error {
                    line(format!("{:>5} torch error: {e}", b.batch));
                    continue;
                }
                line(format!(
                    "{:>5} {:>15} {:>12} {:>8} {:>16} {:>13} {:>8} {:>15}",
                    b.batch,
                    opt(b.decode.as_ref().map(|d| d.tokens_per_s), 1),
                    opt(tb.decode.as_ref().map(|d| d.tokens_per_s), 1),
                    opt(vs.and_then(|v| v.decode_speedup), 2),
                    opt(b.prefill.as_ref().map(|p| p.tokens_per_s), 1),
                    opt(tb.prefill.as_ref().map(|p| p.tokens_per_s), 1),
                    opt(vs.and_then(|v| v.prefill_speedup), 2),
                    vs.map_or("-".into(), |v| format!(
                        "{}/{}",
                        v.first_tokens_agree, v.first_tokens_compared
                    )),
                ));
            }
        }
    }
    if let Some(e) = &r.error {
        line(format!("error: {e}"));
    }
    out
}

/// Where a result keeps one torch recipe's figures and its ratios to them.
type TorchColumns = fn(&BatchResult) -> (Option<&TorchBatch>, Option<&VsTorch>);
