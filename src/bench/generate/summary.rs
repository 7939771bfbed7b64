//! The figures of `bench generate`: bytes a decode step reads, spreads of step times, each batch's results and PyTorch's beside them.

#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use super::*;

/// Bytes of every weight as the GPU holds it: bf16 matrices and embedding, f32 norms.
pub fn device_weight_bytes(c: &ModelConfig) -> f64 {
    let (d, v) = (c.hidden_size as f64, c.vocab_size as f64);
    let head = if c.tie_word_embeddings { 0.0 } else { v * d };
    c.num_layers as f64 * layer_matrix_bytes(c) + 2.0 * (v * d + head) + norm_bytes(c)
}

fn layer_matrix_bytes(c: &ModelConfig) -> f64 {
    let (d, f) = (c.hidden_size as f64, c.intermediate_size as f64);
    let q = (c.num_heads * c.head_dim) as f64;
    let kv = (c.num_kv_heads * c.head_dim) as f64;
    2.0 * (d * q + 2.0 * d * kv + q * d + 3.0 * d * f)
}

fn norm_bytes(c: &ModelConfig) -> f64 {
    match c.arch {
        Architecture::Llama => 4.0 * c.hidden_size as f64 * (2 * c.num_layers + 1) as f64,
        Architecture::Olmo => 0.0,
    }
}

/// Bytes one decode step of `batch` sequences must move (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct StepBytes {
    /// Weights: every matrix, the LM head, the norms, `batch` embedding rows.
    pub weights: f64,
    /// KV cache reads and writes, averaged over the decode steps.
    pub kv_mean: f64,
}

pub fn step_bytes(
    c: &ModelConfig,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
) -> StepBytes {
    let (d, v, b) = (c.hidden_size as f64, c.vocab_size as f64, batch as f64);
    let weights =
        c.num_layers as f64 * layer_matrix_bytes(c) + 2.0 * v * d + norm_bytes(c) + 2.0 * b * d;
    let kv_row = (c.num_layers * c.num_kv_heads * c.head_dim) as f64 * 2.0 * 2.0;
    let positions = prompt_len as f64 + 1.0 + new_tokens as f64 / 2.0;
    StepBytes {
        weights,
        kv_mean: b * kv_row * positions,
    }
}

/// Median, minimum and maximum.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// The spread of `v` scaled by `scale` (None when empty).
pub fn spread(v: &[f64], scale: f64) -> Option<Spread> {
    let mut s: Vec<f64> = v.iter().map(|x| x * scale).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    };
    Some(Spread {
        median,
        min: s[0],
        max: s[n - 1],
    })
}

/// What the GPU side measured for one batch (seconds), see `bench::generate`.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    pub prefill_s: f64,
    pub forward_s: Vec<f64>,
    pub pick_s: Vec<f64>,
    pub first_tokens: Vec<u32>,
    pub peak_memory_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prefill {
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decode {
    pub steps: usize,
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    /// A whole step: forward and token choice.
    pub step_ms: Spread,
    #[serde(default)]
    pub forward_ms: Option<Spread>,
    #[serde(default)]
    pub pick_ms: Option<Spread>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bandwidth {
    /// Weight bytes / the median forward.
    pub weights_gb_s: f64,
    pub weights_of_copy: Option<f64>,
    /// Weight and mean KV bytes / the median forward.
    pub with_kv_gb_s: f64,
    pub with_kv_of_copy: Option<f64>,
    /// The floor of a step: its weight bytes read once at the copy bandwidth measured in the
    /// same run (ms).
    #[serde(default)]
    pub floor_ms: Option<f64>,
    /// floor_ms / the median whole step (forward and token choice): the share of the floor a
    /// step reaches (issue 18's batch-1 target is 0.85).
    #[serde(default)]
    pub step_of_floor: Option<f64>,
}

/// PyTorch's figures for one batch size (tools/bench_generate_torch.py's `results[]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TorchBatch {
    pub batch: usize,
    #[serde(default)]
    pub prefill: Option<Prefill>,
    #[serde(default)]
    pub decode: Option<TorchDecode>,
    #[serde(default)]
    pub first_tokens: Vec<u32>,
    #[serde(default)]
    pub error: Option<String>,
}

/// transformers' decode figures: seconds = generate's − the prefill's; the step times come
/// from a stopping criterion's clock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TorchDecode {
    pub steps: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    #[serde(default)]
    pub step_ms: Option<Spread>,
}

/// implicit / torch.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VsTorch {
    pub decode_speedup: Option<f64>,
    pub prefill_speedup: Option<f64>,
    /// Leading generated tokens of sequence 0 that agree (of those both kept).
    pub first_tokens_agree: usize,
    pub first_tokens_compared: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchResult {
    pub batch: usize,
    pub prefill: Option<Prefill>,
    pub decode: Option<Decode>,
    pub bytes_per_step: StepBytes,
    pub bandwidth: Option<Bandwidth>,
    pub peak_memory_bytes: Option<u64>,
    pub first_tokens: Vec<u32>,
    pub torch: Option<TorchBatch>,
    pub vs_torch: Option<VsTorch>,
    /// transformers' fast recipe at this batch size (static KV cache, torch.compile).
    pub torch_static_compile: Option<TorchBatch>,
    pub vs_torch_static_compile: Option<VsTorch>,
    pub error: Option<String>,
}

impl BatchResult {
    /// A batch that failed: its error and the bytes it would have moved.
    pub fn failed(batch: usize, bytes_per_step: StepBytes, error: String) -> BatchResult {
        BatchResult {
            batch,
            prefill: None,
            decode: None,
            bytes_per_step,
            bandwidth: None,
            peak_memory_bytes: None,
            first_tokens: Vec::new(),
            torch: None,
            vs_torch: None,
            torch_static_compile: None,
            vs_torch_static_compile: None,
            error: Some(error),
        }
    }
}

/// `bytes` read at `copy_gb_s` (the copy ceiling), in ms; None without a positive ceiling.
pub fn floor_ms(bytes: f64, copy_gb_s: Option<f64>) -> Option<f64> {
    copy_gb_s
        .filter(|&c| c > 0.0)
        .map(|c| bytes / (c * 1e9) * 1e3)
}

/// One batch's figures from its measurements.
pub fn summarize(
    batch: usize,
    plan: &Plan,
    bytes_per_step: StepBytes,
    m: &Measured,
    copy_gb_s: Option<f64>,
) -> BatchResult {
    let prompt_tokens = batch * plan.prompt_len;
    let prefill = Prefill {
        tokens: prompt_tokens,
        seconds: m.prefill_s,
        tokens_per_s: prompt_tokens as f64 / m.prefill_s.max(1e-12),
    };
    let step_s: Vec<f64> = m
        .forward_s
        .iter()
        .zip(&m.pick_s)
        .map(|(f, p)| f + p)
        .collect();
    let decode = spread(&step_s, 1e3).map(|step_ms| {
        let seconds: f64 = step_s.iter().sum();
        let tokens = batch * step_s.len();
        Decode {
            steps: step_s.len(),
            tokens,
            seconds,
            tokens_per_s: tokens as f64 / seconds.max(1e-12),
            step_ms,
            forward_ms: spread(&m.forward_s, 1e3),
            pick_ms: spread(&m.pick_s, 1e3),
        }
    });
    let step_median_ms = decode.as_ref().map(|d| d.step_ms.median);
    let bandwidth = spread(&m.forward_s, 1.0).map(|f| {
        let per_s = 1.0 / f.median.max(1e-12) / 1e9;
        let weights_gb_s = bytes_per_step.weights * per_s;
        let with_kv_gb_s = (bytes_per_step.weights + bytes_per_step.kv_mean) * per_s;
        Bandwidth {
            weights_gb_s,
            weights_of_copy: copy_gb_s.map(|c| weights_gb_s / c),
            with_kv_gb_s,
            with_kv_of_copy: copy_gb_s.map(|c| with_kv_gb_s / c),
            floor_ms: floor_ms(bytes_per_step.weights, copy_gb_s),
            step_of_floor: floor_ms(bytes_per_step.weights, copy_gb_s)
                .zip(step_median_ms)
                .map(|(floor, step)| floor / step.max(1e-12)),
        }
    });
    BatchResult {
        batch,
        prefill: Some(prefill),
        decode,
        bytes_per_step,
        bandwidth,
        peak_memory_bytes: m.peak_memory_bytes,
        first_tokens: m.first_tokens.clone(),
        torch: None,
        vs_torch: None,
        torch_static_compile: None,
        vs_torch_static_compile: None,
        error: None,
    }
}

/// One timed load of the model folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadTiming {
    /// "first" or "second".
    pub label: String,
    /// The page cache's state before the load, in words.
    pub page_cache: String,
    /// The fraction of the weight files' pages cached before the load, where known.
    #[serde(default)]
    pub resident_before: Option<f64>,
    pub seconds: f64,
    /// Bytes on disk / seconds.
    pub gb_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoadResult {
    pub files: usize,
    pub bytes_on_disk: u64,
    /// bf16 matrices, f32 norms: what the GPU holds.
    pub device_bytes: f64,
    pub loads: Vec<LoadTiming>,
}

/// The page cache's state in words, from whether a drop was asked for and the fraction
/// cached.
pub fn page_cache_words(drop_asked: bool, resident: Option<f64>) -> String {
    let how = match resident {
        Some(r) if r < 0.05 => format!("cold ({:.0}% cached)", 100.0 * r),
        Some(r) if r > 0.95 => format!("warm ({:.0}% cached)", 100.0 * r),
        Some(r) => format!("partly cached ({:.0}%)", 100.0 * r),
        None if drop_asked => "dropped (not verified)".into(),
        None => "warm (loaded just before)".into(),
    };
    if drop_asked {
        format!("{how} after posix_fadvise(DONTNEED)")
    } else {
        how
    }
}

pub fn load_timing(
    label: &str,
    drop_asked: bool,
    resident: Option<f64>,
    seconds: f64,
    bytes: u64,
) -> LoadTiming {
    LoadTiming {
        label: label.into(),
        page_cache: page_cache_words(drop_asked, resident),
        resident_before: resident,
        seconds,
        gb_s: bytes as f64 / seconds.max(1e-12) / 1e9,
    }
}

/// tools/bench_generate_torch.py's JSON (the fields read here).
#[derive(Clone, Debug, Deserialize)]
pub struct TorchFile {
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub torch: Option<String>,
    #[serde(default)]
    pub transformers: Option<String>,
    pub config: TorchConfig,
    #[serde(default)]
    pub load: Option<TorchLoad>,
    /// Plain `generate`.
    pub results: Vec<TorchBatch>,
    /// The static-cache + torch.compile recipe (`--recipes`; absent from older files).
    #[serde(default)]
    pub results_static_compile: Vec<TorchBatch>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TorchConfig {
    pub prompt_len: usize,
    pub new_tokens: usize,
    #[serde(default)]
    pub seed: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct TorchLoad {
    #[serde(default)]
    pub loads: Vec<LoadTiming>,
    #[serde(default)]
    pub error: Option<String>,
}

/// The torch file, parsed and raw, checked against the plan (same prompt and generation
/// lengths: other figures would not compare).
pub fn read_torch(path: &Path, plan: &Plan) -> Result<(TorchFile, serde_json::Value)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--torch {}: cannot read", path.display()))?;
    let raw: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("--torch {}: not JSON", path.display()))?;
    let file: TorchFile = serde_json::from_value(raw.clone()).with_context(|| {
        format!(
            "--torch {}: not tools/bench_generate_torch.py's JSON (config.prompt_len, \
             config.new_tokens, results[] of batch, prefill, decode)",
            path.display()
        )
    })?;
    let c = &file.config;
    if (c.prompt_len, c.new_tokens) != (plan.prompt_len, plan.new_tokens) {
        bail!(
            "--torch {}: measured with prompts of {} tokens and {} new tokens; this run has {} \
             and {}",
            path.display(),
            c.prompt_len,
            c.new_tokens,
            plan.prompt_len,
            plan.new_tokens
        );
    }
    Ok((file, raw))
}

/// Puts PyTorch's figures for the same batch size beside each result, for both of the script's
/// recipes. Generated tokens are compared only when the torch run drew its prompts from the same
/// `seed`.
pub fn attach_torch(results: &mut [BatchResult], torch: &TorchFile, seed: u64) {
    let same_prompts = torch.config.seed == Some(seed);
    for r in results.iter_mut() {
        if let Some(t) = torch.results.iter().find(|t| t.batch == r.batch) {
            r.vs_torch = Some(compare(r, t, same_prompts));
            r.torch = Some(t.clone());
        }
        let fast = torch.results_static_compile.iter();
        if let Some(t) = fast.clone().find(|t| t.batch == r.batch) {
            r.vs_torch_static_compile = Some(compare(r, t, same_prompts));
            r.torch_static_compile = Some(t.clone());
        }
    }
}

/// implicit's figures over torch's for one batch size.
fn compare(r: &BatchResult, t: &TorchBatch, same_prompts: bool) -> VsTorch {
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let compared = if same_prompts {
        r.first_tokens.len().min(t.first_tokens.len())
    } else {
        0
    };
    let agree = r
        .first_tokens
        .iter()
        .zip(&t.first_tokens)
        .take(compared)
        .take_while(|(a, b)| a == b)
        .count();
    VsTorch {
        decode_speedup: ratio(
            r.decode.as_ref().map(|d| d.tokens_per_s),
            t.decode.as_ref().map(|d| d.tokens_per_s),
        ),
        prefill_speedup: ratio(
            r.prefill.as_ref().map(|p| p.tokens_per_s),
            t.prefill.as_ref().map(|p| p.tokens_per_s),
        ),
        first_tokens_agree: agree,
        first_tokens_compared: compared,
    }
}
