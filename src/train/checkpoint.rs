//! Training checkpoints: a loadable model folder (model.safetensors, config.json, tokenizer
//! files) plus the optimizer state and trainer position, written atomically: everything goes
//! into a temporary folder first, which is renamed into place once complete.

use crate::bail;
use crate::error::{Context, Result};
use crate::train::plan::OptimizerPlacement;
use half::bf16;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where a run stands, saved beside each checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Epochs completed (the checkpoint is taken at the end of this one).
    pub epoch: usize,
    /// Optimizer steps taken so far.
    pub step: usize,
    pub total_steps: usize,
    pub seed: u64,
    /// Training examples (after encoding) the data order was drawn over.
    pub examples: usize,
    /// Which optimizer state wrote the checkpoint (`device` for checkpoints that predate the
    /// field: the fp32 kind, as the CPU trainer's). The files are the same for every kind;
    /// resuming under another kind converts, see [`placement_change`].
    #[serde(default)]
    pub optimizer_state: OptimizerPlacement,
}

/// What resuming a checkpoint written with optimizer state `saved` under `now` does to the
/// numbers, when it is more than moving them (None for fp32 state on the GPU or the host, which
/// hold the same values).
pub fn placement_change(saved: OptimizerPlacement, now: OptimizerPlacement) -> Option<String> {
    use OptimizerPlacement::Bf16;
    match (saved == Bf16, now == Bf16) {
        (true, false) => Some(
            "the checkpoint's optimizer state is bf16 (no fp32 master): the fp32 master weights \
             start as its bf16 parameters, and the moments are its bf16 moments widened"
                .to_string(),
        ),
        (false, true) => Some(
            "the checkpoint's optimizer state is fp32: --optimizer-state bf16 drops the fp32 \
             master (the bf16 parameters go on from it rounded to nearest) and rounds the \
             moments to bf16"
                .to_string(),
        ),
        _ => None,
    }
}

/// Parameter values in the dtype they are stored in.
pub enum ParamValues<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
}

/// The folder of the checkpoint after `epoch` epochs.
pub fn epoch_dir(out: &Path, epoch: usize) -> PathBuf {
    out.join(format!("epoch-{epoch}"))
}

/// Writes `tensors` as one safetensors file at `path` (through a temporary file and a rename).
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, ParamValues)]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(name, shape, values)| {
            let (dtype, bytes): (Dtype, &[u8]) = match values {
                ParamValues::F32(v) => (Dtype::F32, bytemuck::cast_slice(v)),
                ParamValues::BF16(v) => (Dtype::BF16, bytemuck::cast_slice(v)),
            };
            TensorView::new(dtype, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .with_context(|| format!("{}: tensor {name}", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, None, &tmp)
        .with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("{}: cannot rename into place", path.display()))
}

/// Writes a checkpoint's tensors into `dir`: the parameters (`params` in `layout` order, in
/// their storage dtype) as model.safetensors, and the optimizer state (flat f32 tensors by name)
/// as optimizer.safetensors.
pub fn write_checkpoint_tensors<'a>(
    dir: &Path,
    layout: &[(String, Vec<usize>)],
    params: impl IntoIterator<Item = ParamValues<'a>>,
    state: impl IntoIterator<Item = (&'a String, &'a [f32])>,
) -> Result<()> {
    let tensors: Vec<(String, Vec<usize>, ParamValues)> = layout
        .iter()
        .zip(params)
        .map(|((name, shape), values)| (name.clone(), shape.clone(), values))
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &tensors)?;
    let state: Vec<(String, Vec<usize>, ParamValues)> = state
        .into_iter()
        .map(|(name, v)| (name.clone(), vec![v.len()], ParamValues::F32(v)))
        .collect();
    write_safetensors(&dir.join("optimizer.safetensors"), &state)
}

/// Reads every F32 tensor of a safetensors file (optimizer state).
pub fn read_f32_tensors(path: &Path) -> Result<HashMap<String, Vec<f32>>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: invalid safetensors", path.display()))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            bail!(
                "{}: tensor {name} is {:?}, expected F32",
                path.display(),
                view.dtype()
            );
        }
        let v = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, v);
    }
    Ok(out)
}

/// Copies the files that make a checkpoint loadable (config, tokenizer) from the source model.
pub fn copy_model_files(from: &Path, to: &Path) -> Result<()> {
    for name in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        let src = from.join(name);
        if src.is_file() {
            std::fs::copy(&src, to.join(name))
                .with_context(|| format!("cannot copy {} to {}", src.display(), to.display()))?;
        }
    }
    Ok(())
}

/// Makes `tmp` the checkpoint folder `dir`, replacing an older one of the same name.
pub fn commit_dir(tmp: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        let old = dir.with_extension("old");
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dir, &old)
            .with_context(|| format!("{}: cannot move aside", dir.display()))?;
        std::fs::rename(tmp, dir)
            .with_context(|| format!("{}: cannot rename into place", dir.display()))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(tmp, dir)
            .with_context(|| format!("{}: cannot rename into place", dir.display()))?;
    }
    Ok(())
}

pub fn write_state(dir: &Path, state: &TrainerState) -> Result<()> {
    let path = dir.join("trainer_state.json");
    let text = serde_json::to_string_pretty(state).context("trainer state")?;
    std::fs::write(&path, text).with_context(|| format!("{}: cannot write", path.display()))
}

pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid trainer state", path.display()))
}

/// The checkpoint of the most epochs under `out` that is complete (has its trainer state).
pub fn latest_checkpoint(out: &Path) -> Option<(usize, PathBuf)> {
    let entries = std::fs::read_dir(out).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let epoch: usize = name.strip_prefix("epoch-")?.parse().ok()?;
            e.path()
                .join("trainer_state.json")
                .is_file()
                .then(|| (epoch, e.path()))
        })
        .max_by_key(|(epoch, _)| *epoch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use OptimizerPlacement::{Bf16, Device, Host};

    #[test]
    fn trainer_state_records_the_optimizer_state_and_reads_older_files_as_fp32() {
        let dir =
            std::env::temp_dir().join(format!("implicit-trainer-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = TrainerState {
            epoch: 2,
            step: 10,
            total_steps: 20,
            seed: 7,
            examples: 40,
            optimizer_state: Bf16,
        };
        write_state(&dir, &state).unwrap();
        assert_eq!(read_state(&dir).unwrap(), state);
        // Written before the field existed.
        let older = r#"{"epoch": 1, "step": 5, "total_steps": 20, "seed": 7, "examples": 40}"#;
        std::fs::write(dir.join("trainer_state.json"), older).unwrap();
        assert_eq!(read_state(&dir).unwrap().optimizer_state, Device);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_changes_to_or_from_bf16_state_are_conversions() {
        for (saved, now) in [
            (Device, Device),
            (Device, Host),
            (Host, Device),
            (Bf16, Bf16),
        ] {
            assert_eq!(placement_change(saved, now), None, "{saved:?} → {now:?}");
        }
        let widened = placement_change(Bf16, Host).unwrap();
        assert!(
            widened.contains("master weights start as its bf16 parameters"),
            "{widened}"
        );
        let rounded = placement_change(Device, Bf16).unwrap();
        assert!(rounded.contains("drops the fp32 master"), "{rounded}");
    }
}
