//! Training checkpoints: a loadable model folder (model.safetensors, config.json, tokenizer
//! files) plus the optimizer state and trainer position, written atomically: everything goes
//! into a temporary folder of a unique name first, each file synced to disk, and the folder is
//! renamed into place once complete (then its parent synced, so the rename itself survives a
//! crash).

use crate::bail;
use crate::error::{Context, Result};
use crate::io::atomic::{sync_dir, temp_path};
use crate::train::plan::OptimizerPlacement;
use crate::train::record::RunRecord;
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
    /// The recipe and inputs the run was made with (see `train::record`); None in checkpoints
    /// that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<RunRecord>,
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

/// The folder `path` is in ("." for a bare name).
fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Flushes a file's data to disk.
fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("{}: cannot sync", path.display()))
}

/// The permissions a file created in `dir` gets (0666 less the umask on Unix): measured on a
/// fresh file, as the umask cannot be read without changing it.
fn default_file_permissions(dir: &Path) -> Result<std::fs::Permissions> {
    let probe = temp_path(&dir.join("mode-probe"));
    let made = std::fs::File::create(&probe).and_then(|f| f.metadata());
    let _ = std::fs::remove_file(&probe);
    Ok(made
        .with_context(|| format!("{}: cannot create a file", dir.display()))?
        .permissions())
}

/// Writes `tensors` as one safetensors file at `path` (through a temporary file, synced, and a
/// rename). safetensors writes through a private (0600) temporary file of its own: the file
/// gets the mode any other file created there gets.
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
    let tmp = temp_path(path);
    let written = (|| {
        safetensors::serialize_to_file(views, None, &tmp)
            .with_context(|| format!("{}: cannot write", tmp.display()))?;
        std::fs::set_permissions(&tmp, default_file_permissions(parent_of(path))?)
            .with_context(|| format!("{}: cannot set permissions", tmp.display()))?;
        sync_file(&tmp)?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("{}: cannot rename into place", path.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
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
    // The last guard before a checkpoint: one that holds NaN or ±inf weights is never written,
    // whatever step produced them (the run fails, earlier checkpoints stay).
    for (name, _, values) in &tensors {
        let first_bad = match values {
            ParamValues::F32(v) => v.iter().position(|x| !x.is_finite()),
            ParamValues::BF16(v) => v.iter().position(|x| !x.is_finite()),
        };
        if let Some(i) = first_bad {
            bail!(
                "{}: parameter {name} is not finite (element {i}); the checkpoint is not written",
                dir.display()
            );
        }
    }
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

/// Copies the files that make a checkpoint loadable (config, tokenizer) from the source model,
/// synced; as new files (not `fs::copy`, which would carry a read-only source's mode over).
pub fn copy_model_files(from: &Path, to: &Path) -> Result<()> {
    for name in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        let src = from.join(name);
        if src.is_file() {
            let bytes =
                std::fs::read(&src).with_context(|| format!("{}: cannot read", src.display()))?;
            write_synced(&to.join(name), &bytes)?;
        }
    }
    Ok(())
}

/// Writes a new file and syncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    std::fs::File::create(path)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// Makes `tmp` the checkpoint folder `dir`, replacing an older one of the same name: `tmp`'s
/// entries are synced before the rename, and the parent after it.
pub fn commit_dir(tmp: &Path, dir: &Path) -> Result<()> {
    sync_dir(tmp)?;
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
    sync_dir(parent_of(dir))
}

pub fn write_state(dir: &Path, state: &TrainerState) -> Result<()> {
    let path = dir.join("trainer_state.json");
    let text = serde_json::to_string_pretty(state).context("trainer state")?;
    write_synced(&path, text.as_bytes())
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
            record: Some(
                [("lr", "0.001"), ("data", "3 bytes, sha256 ab")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
            ),
        };
        write_state(&dir, &state).unwrap();
        assert_eq!(read_state(&dir).unwrap(), state);
        // Written before the field existed.
        let older = r#"{"epoch": 1, "step": 5, "total_steps": 20, "seed": 7, "examples": 40}"#;
        std::fs::write(dir.join("trainer_state.json"), older).unwrap();
        let older = read_state(&dir).unwrap();
        assert_eq!((older.optimizer_state, older.record), (Device, None));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_checkpoint_with_a_non_finite_weight_is_not_written() {
        let dir = std::env::temp_dir().join(format!("implicit-nan-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let layout = vec![("a".to_string(), vec![2]), ("b".to_string(), vec![3])];
        let good = [1.0f32, 2.0];
        let bad = [bf16::ONE, bf16::NAN, bf16::INFINITY];
        let err = write_checkpoint_tensors(
            &dir,
            &layout,
            [ParamValues::F32(&good), ParamValues::BF16(&bad)],
            [],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("parameter b is not finite (element 1)"),
            "{err}"
        );
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "files written: {left:?}");
        let bad = [1.0f32, f32::NEG_INFINITY];
        let err = write_checkpoint_tensors(&dir, &layout[..1], [ParamValues::F32(&bad)], [])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("parameter a is not finite (element 1)"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn weights_get_the_mode_other_new_files_get_and_no_temporary_is_left() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("implicit-mode-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let layout = vec![("a".to_string(), vec![2])];
        let values = [1.0f32, 2.0];
        let state = [1.0f32; 2];
        let name = "m".to_string();
        write_checkpoint_tensors(
            &dir,
            &layout,
            [ParamValues::F32(&values)],
            [(&name, &state[..])],
        )
        .unwrap();
        std::fs::write(dir.join("plain"), b"x").unwrap();
        let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        // safetensors alone leaves 0600; a file written the ordinary way gets 0666 & !umask.
        assert_eq!(mode("model.safetensors"), mode("plain"));
        assert_eq!(mode("optimizer.safetensors"), mode("plain"));
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["model.safetensors", "optimizer.safetensors", "plain"]
        );
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
