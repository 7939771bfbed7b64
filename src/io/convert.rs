//! GGUF (llama architecture) to a Hugging Face model directory: model.safetensors (F32),
//! config.json, tokenizer.json, tokenizer_config.json and generation_config.json.

mod folder;
mod hf_tokenizer;

use crate::error::{Context, Error, Result};
use crate::io::gguf::GgufFile;
use safetensors::tensor::{Dtype, View};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// What a conversion produced.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvertReport {
    pub architecture: String,
    pub n_tensors: usize,
    pub n_parameters: u64,
    pub vocab_size: usize,
    /// `tokenizer.ggml.model`: "llama" (SentencePiece) or "gpt2" (byte-level BPE).
    pub tokenizer: String,
}

impl fmt::Display for ConvertReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.tokenizer.as_str() {
            "llama" => "SentencePiece BPE",
            "gpt2" => "byte-level BPE",
            _ => "?",
        };
        write!(
            f,
            "{}: {} tensors, {} parameters, vocab {} ({} tokenizer, {kind})",
            self.architecture, self.n_tensors, self.n_parameters, self.vocab_size, self.tokenizer
        )
    }
}

/// The llama hyper-parameters, from `llama.*` metadata.
struct LlamaConfig {
    hidden: u64,
    ffn: u64,
    n_heads: u64,
    n_kv_heads: u64,
    n_layers: u64,
    rms_eps: f32,
    rope_theta: f32,
    context: u64,
}

impl LlamaConfig {
    fn read(gguf: &GgufFile) -> Result<LlamaConfig> {
        let need = |key: &str| -> Result<u64> {
            gguf.get_u64(key)?
                .ok_or_else(|| fault(gguf, format_args!("no {key} in the metadata")))
        };
        let n_heads = need("llama.attention.head_count")?;
        let config = LlamaConfig {
            hidden: need("llama.embedding_length")?,
            ffn: need("llama.feed_forward_length")?,
            n_heads,
            n_kv_heads: gguf
                .get_u64("llama.attention.head_count_kv")?
                .unwrap_or(n_heads),
            n_layers: need("llama.block_count")?,
            rms_eps: gguf
                .get_f32("llama.attention.layer_norm_rms_epsilon")?
                .ok_or_else(|| {
                    fault(
                        gguf,
                        "no llama.attention.layer_norm_rms_epsilon in the metadata",
                    )
                })?,
            rope_theta: gguf.get_f32("llama.rope.freq_base")?.unwrap_or(10000.0),
            context: need("llama.context_length")?,
        };
        let c = &config;
        if c.n_heads == 0 || c.n_kv_heads == 0 || !c.hidden.is_multiple_of(c.n_heads) {
            crate::bail!(
                "{}: embedding length {} does not split into {} heads",
                gguf.path().display(),
                c.hidden,
                c.n_heads
            );
        }
        if !c.n_heads.is_multiple_of(c.n_kv_heads) || !c.head_dim().is_multiple_of(2) {
            crate::bail!(
                "{}: {} heads, {} KV heads of dimension {} is not a valid llama attention",
                gguf.path().display(),
                c.n_heads,
                c.n_kv_heads,
                c.head_dim()
            );
        }
        if let Some(rope_dims) = gguf.get_u64("llama.rope.dimension_count")? {
            if rope_dims != c.head_dim() {
                crate::bail!(
                    "{}: RoPE on {rope_dims} of {} head dimensions is not supported",
                    gguf.path().display(),
                    c.head_dim()
                );
            }
        }
        Ok(config)
    }
    fn head_dim(&self) -> u64 {
        self.hidden / self.n_heads
    }
}

fn fault(gguf: &GgufFile, what: impl fmt::Display) -> Error {
    Error(format!("{}: {what}", gguf.path().display()))
}

/// A float as the shortest decimal that reads back as the same f32 (1e-5, not
/// 9.999999747378752e-06), so config.json holds the value its author wrote.
fn f32_json(x: f32) -> Value {
    json!(x.to_string().parse::<f64>().unwrap_or(x.into()))
}

/// One output tensor: where it comes from and what to do to it.
struct Planned {
    hf_name: String,
    gguf_name: String,
    /// HF shape: the GGUF dims reversed.
    shape: Vec<usize>,
    /// Undo llama.cpp's interleaved-RoPE row permutation with this many heads.
    unpermute_heads: Option<usize>,
}

/// The Hugging Face name of a llama GGUF tensor, its expected GGUF dims, and the head count
/// to unpermute with (Q and K only); None for a tensor HF's Llama has no place for.
fn hf_counterpart(
    name: &str,
    c: &LlamaConfig,
    vocab: u64,
) -> Option<(String, Vec<u64>, Option<u64>)> {
    let (d, f) = (c.hidden, c.ffn);
    let (q_out, kv_out) = (c.n_heads * c.head_dim(), c.n_kv_heads * c.head_dim());
    match name {
        "token_embd.weight" => {
            return Some(("model.embed_tokens.weight".into(), vec![d, vocab], None))
        }
        "output_norm.weight" => return Some(("model.norm.weight".into(), vec![d], None)),
        "output.weight" => return Some(("lm_head.weight".into(), vec![d, vocab], None)),
        _ => {}
    }
    let (layer, part) = name.strip_prefix("blk.")?.split_once('.')?;
    let layer: u64 = layer.parse().ok().filter(|&i| i < c.n_layers)?;
    let (hf, dims, heads) = match part {
        "attn_q.weight" => ("self_attn.q_proj", vec![d, q_out], Some(c.n_heads)),
        "attn_k.weight" => ("self_attn.k_proj", vec![d, kv_out], Some(c.n_kv_heads)),
        "attn_v.weight" => ("self_attn.v_proj", vec![d, kv_out], None),
        "attn_output.weight" => ("self_attn.o_proj", vec![q_out, d], None),
        "ffn_gate.weight" => ("mlp.gate_proj", vec![d, f], None),
        "ffn_up.weight" => ("mlp.up_proj", vec![d, f], None),
        "ffn_down.weight" => ("mlp.down_proj", vec![f, d], None),
        "attn_norm.weight" => ("input_layernorm", vec![d], None),
        "ffn_norm.weight" => ("post_attention_layernorm", vec![d], None),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}.weight"), dims, heads))
}

/// The HF tensors every llama layer has.
const LAYER_TENSORS: [&str; 9] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
    "input_layernorm",
    "post_attention_layernorm",
];

/// Maps every GGUF tensor to its Hugging Face name, checking shapes against the config.
/// Unknown tensors are an error rather than silently dropped weights.
fn plan_tensors(gguf: &GgufFile, c: &LlamaConfig, vocab: u64) -> Result<Vec<Planned>> {
    let mut plan = Vec::new();
    for t in gguf.tensors() {
        let Some((hf_name, expected_dims, heads)) = hf_counterpart(&t.name, c, vocab) else {
            crate::bail!(
                "{}: tensor '{}' has no Hugging Face Llama counterpart",
                gguf.path().display(),
                t.name
            );
        };
        if t.dims != expected_dims {
            crate::bail!(
                "{}: tensor '{}' has dims {:?}, but the metadata implies {expected_dims:?}",
                gguf.path().display(),
                t.name,
                t.dims
            );
        }
        if !t.ggml_type.can_dequantize() {
            crate::bail!(
                "{}: tensor '{}' has type {}, which cannot be dequantised",
                gguf.path().display(),
                t.name,
                t.ggml_type
            );
        }
        plan.push(Planned {
            hf_name,
            gguf_name: t.name.clone(),
            shape: t.shape(),
            unpermute_heads: heads.map(|h| h as usize),
        });
    }
    // Every layer needs all its tensors, and the model its embedding and final norm. (A
    // block_count beyond the tensor count is caught here before it can drive a long loop.)
    let have: HashSet<&str> = plan.iter().map(|p| p.hf_name.as_str()).collect();
    let layers = (0..c.n_layers.min(plan.len() as u64 + 1))
        .flat_map(|i| LAYER_TENSORS.map(move |part| format!("model.layers.{i}.{part}.weight")));
    let mut needed = [
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".into(),
    ]
    .into_iter()
    .chain(layers);
    if let Some(missing) = needed.find(|n| !have.contains(n.as_str())) {
        crate::bail!(
            "{}: no GGUF tensor for the Hugging Face tensor '{missing}'",
            gguf.path().display()
        );
    }
    Ok(plan)
}

/// Undoes llama.cpp's permutation of Q/K rows. Its converter turned Hugging Face's
/// half-rotation layout (row `j * head_dim/2 + i` of a head, j in 0..2) into interleaved pairs
/// (row `2i + j`); this moves row `2i + j` of each head back to `j * head_dim/2 + i`.
/// `w` is row-major with `cols` columns and `n_heads * head_dim` rows.
///
/// # Panics
/// If `w` does not split into `n_heads` heads of an even number of rows of `cols`.
pub fn unpermute_qk(w: &[f32], n_heads: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols.max(1);
    assert!(
        n_heads > 0 && rows * cols == w.len() && rows.is_multiple_of(2 * n_heads),
        "unpermute_qk: {} values do not form {n_heads} heads of even height with {cols} columns",
        w.len()
    );
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut out = vec![0.0; w.len()];
    for head in 0..n_heads {
        let base = head * head_dim;
        for i in 0..half {
            for j in 0..2 {
                let (src, dst) = (base + 2 * i + j, base + j * half + i);
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// A tensor that is dequantised only when safetensors writes it, so that at most one
/// converted tensor is in memory at a time. The first failure is kept in `failure`.
struct LazyTensor<'a> {
    gguf: &'a GgufFile,
    plan: &'a Planned,
    failure: &'a RefCell<Option<Error>>,
}

impl View for LazyTensor<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.plan.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let values =
            self.gguf
                .tensor_f32(&self.plan.gguf_name)
                .map(|w| match self.plan.unpermute_heads {
                    Some(heads) => unpermute_qk(&w, heads, *self.plan.shape.last().unwrap_or(&1)),
                    None => w,
                });
        match values {
            Ok(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Err(e) => {
                self.failure.borrow_mut().get_or_insert(e);
                // Right-sized filler keeps the writer consistent; the file is discarded.
                Cow::Owned(vec![0; self.data_len()])
            }
        }
    }
    fn data_len(&self) -> usize {
        self.plan.shape.iter().product::<usize>() * 4
    }
}

/// Files written under temporary names in the output directory; renamed into place by
/// `commit`, removed if dropped before that, so a failed conversion leaves no half files.
struct Staged {
    dir: PathBuf,
    files: Vec<(PathBuf, PathBuf)>,
}

impl Staged {
    fn new(dir: &Path) -> Staged {
        Staged {
            dir: dir.to_path_buf(),
            files: Vec::new(),
        }
    }
    /// A fresh temporary path for the final file `name`.
    fn stage(&mut self, name: &str) -> PathBuf {
        let tmp = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        self.files.push((tmp.clone(), self.dir.join(name)));
        tmp
    }
    fn write(&mut self, name: &str, contents: &[u8]) -> Result<PathBuf> {
        let tmp = self.stage(name);
        fs::write(&tmp, contents).with_context(|| format!("{}: cannot write", tmp.display()))?;
        Ok(tmp)
    }
    fn commit(mut self) -> Result<()> {
        for (tmp, path) in std::mem::take(&mut self.files) {
            fs::rename(&tmp, &path).with_context(|| {
                format!("cannot rename {} to {}", tmp.display(), path.display())
            })?;
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (tmp, _) in &self.files {
            let _ = fs::remove_file(tmp);
        }
    }
}

fn json_bytes(v: &Value) -> Vec<u8> {
    let mut s = serde_json::to_string_pretty(v).expect("a serde_json::Value always serialises");
    s.push('\n');
    s.into_bytes()
}

/// Converts the llama-architecture GGUF `input` into a Hugging Face model directory `out_dir`,
/// which must be missing or empty. Everything is checked before anything is written.
pub fn convert_gguf(input: &Path, out_dir: &Path) -> Result<ConvertReport> {
    convert_gguf_with(input, out_dir, false)
}

/// [`convert_gguf`]; with `overwrite`, into a folder that may hold a model already: its model
/// files ([`folder::is_model_file`]: every safetensors file and index, config, tokenizer and
/// template files) are removed once the new ones are written and before they are renamed
/// into place, so that none of the old model is loaded with the new one. Other files stay.
pub fn convert_gguf_with(input: &Path, out_dir: &Path, overwrite: bool) -> Result<ConvertReport> {
    if !overwrite {
        let mut present: Vec<String> = folder::entries(out_dir)?
            .into_iter()
            .filter(|n| !folder::is_staging_leftover(n))
            .collect();
        present.sort();
        if let Some(first) = present.first() {
            crate::bail!(
                "{}: not empty ({first}{}); use --overwrite to replace the model in it, or \
                 choose another folder",
                out_dir.display(),
                match present.len() {
                    1 => String::new(),
                    n => format!(" and {} more", n - 1),
                }
            );
        }
    }
    let gguf = GgufFile::open(input)?;
    let arch = gguf
        .get_str("general.architecture")?
        .ok_or_else(|| fault(&gguf, "no general.architecture in the metadata"))?
        .to_string();
    if arch != "llama" {
        crate::bail!(
            "{}: unsupported architecture '{arch}' (only llama can be converted)",
            input.display()
        );
    }
    let config = LlamaConfig::read(&gguf)?;
    let tokenizer = hf_tokenizer::build(&gguf)?;
    let vocab_size = tokenizer.tokens.len();
    let plan = plan_tensors(&gguf, &config, vocab_size as u64)?;
    let tied = gguf.tensor("output.weight").is_none();

    let tokenizer_json = serde_json::to_string(&tokenizer.json).context("tokenizer.json")?;
    // The engine loads tokenizer.json with the tokenizers crate: make sure it can.
    tokenizer_json
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| {
            fault(
                &gguf,
                format_args!("the converted tokenizer does not load: {e}"),
            )
        })?;

    let token_id = |key: &str| -> Result<Option<u64>> {
        Ok(gguf.get_u64(key)?.filter(|&id| id < vocab_size as u64))
    };
    let bos = token_id("tokenizer.ggml.bos_token_id")?;
    let eos = token_id("tokenizer.ggml.eos_token_id")?;
    let c = &config;
    let config_json = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.hidden,
        "intermediate_size": c.ffn,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim(),
        "num_hidden_layers": c.n_layers,
        "rms_norm_eps": f32_json(c.rms_eps),
        "rope_theta": f32_json(c.rope_theta),
        "vocab_size": vocab_size,
        "max_position_embeddings": c.context,
        "tie_word_embeddings": tied,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
    });
    let tokenizer_config = tokenizer_config(&gguf, &tokenizer, bos, eos, c.context)?;
    let generation_config = json!({"bos_token_id": bos, "eos_token_id": eos});

    fs::create_dir_all(out_dir)
        .with_context(|| format!("{}: cannot create the directory", out_dir.display()))?;
    let mut staged = Staged::new(out_dir);
    let config_tmp = staged.write("config.json", &json_bytes(&config_json))?;
    staged.write("tokenizer.json", &json_bytes(&tokenizer.json))?;
    staged.write("tokenizer_config.json", &json_bytes(&tokenizer_config))?;
    staged.write("generation_config.json", &json_bytes(&generation_config))?;
    let weights = staged.stage("model.safetensors");
    let failure = RefCell::new(None);
    let tensors = plan.iter().map(|p| {
        let view = LazyTensor {
            gguf: &gguf,
            plan: p,
            failure: &failure,
        };
        (p.hf_name.clone(), view)
    });
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors, Some(metadata), &weights)
        .with_context(|| format!("{}: cannot write", weights.display()))?;
    if let Some(e) = failure.into_inner() {
        return Err(e);
    }
    // safetensors writes through a private (0600) temporary file: give the weights the mode
    // that the other files got from the umask.
    let mode = fs::metadata(&config_tmp).map(|m| m.permissions());
    if let Ok(mode) = mode {
        fs::set_permissions(&weights, mode)
            .with_context(|| format!("{}: cannot set permissions", weights.display()))?;
    }
    if overwrite {
        let staged_names: Vec<&Path> = staged.files.iter().map(|(tmp, _)| tmp.as_path()).collect();
        for name in folder::entries(out_dir)?
            .into_iter()
            .filter(|n| folder::is_model_file(n))
        {
            let path = out_dir.join(&name);
            if staged_names.contains(&path.as_path()) || !path.is_file() {
                continue;
            }
            fs::remove_file(&path).with_context(|| {
                format!("{}: cannot remove the old model's file", path.display())
            })?;
        }
    }
    staged.commit()?;

    Ok(ConvertReport {
        architecture: arch,
        n_tensors: plan.len(),
        n_parameters: plan
            .iter()
            .map(|p| p.shape.iter().product::<usize>() as u64)
            .sum(),
        vocab_size,
        tokenizer: tokenizer.kind,
    })
}

/// A GGUF converted into a temporary model folder, removed when dropped: lets a command take
/// `--model X.gguf` directly (the folder is only needed while the model loads).
pub struct TempConversion {
    pub dir: PathBuf,
    pub report: ConvertReport,
}

impl TempConversion {
    /// Converts `input` into a fresh folder under the system's temporary directory.
    pub fn new(input: &Path) -> Result<TempConversion> {
        let stem = input
            .file_stem()
            .map_or("model".into(), |s| s.to_string_lossy().into_owned());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("implicit-{stem}-{}-{nanos:x}", std::process::id()));
        match convert_gguf(input, &dir) {
            Ok(report) => Ok(TempConversion { dir, report }),
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }
}

impl Drop for TempConversion {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// tokenizer_config.json: the special tokens by name, whether BOS is added, the chat template.
fn tokenizer_config(
    gguf: &GgufFile,
    tokenizer: &hf_tokenizer::HfTokenizer,
    bos: Option<u64>,
    eos: Option<u64>,
    context: u64,
) -> Result<Value> {
    let name = |id: Option<u64>| id.map(|i| tokenizer.tokens[i as usize].clone());
    let llama = tokenizer.kind == "llama";
    let mut config = json!({
        "tokenizer_class": if llama { "LlamaTokenizerFast" } else { "GPT2Tokenizer" },
        "bos_token": name(bos),
        "eos_token": name(eos),
        "add_bos_token": gguf.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(llama),
        "add_eos_token": gguf.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        "model_max_length": context,
        "clean_up_tokenization_spaces": false,
    });
    let extra = [
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ];
    for (field, key) in extra {
        if let Some(id) = gguf
            .get_u64(key)?
            .filter(|&i| i < tokenizer.tokens.len() as u64)
        {
            config[field] = json!(name(Some(id)));
        }
    }
    if llama {
        config["legacy"] = json!(true);
    }
    if let Some(template) = gguf.get_str("tokenizer.chat_template")? {
        config["chat_template"] = json!(template);
    }
    Ok(config)
}
