//! Safetensors weights through mmap: one file or a sharded checkpoint with
//! model.safetensors.index.json. Tensors whose dtype and alignment already fit are views into
//! the mapping (no copy); others are converted once at load.

use crate::bail;
use crate::error::{Context, Result};
use crate::tensor::{DType, Storage, Tensor};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A named tensor and the file it came from (for error messages).
#[derive(Clone, Debug)]
pub struct Weight {
    pub tensor: Tensor,
    pub file: PathBuf,
}

/// All tensors of a checkpoint, by name.
#[derive(Debug, Default)]
pub struct WeightStore {
    weights: HashMap<String, Weight>,
}

impl WeightStore {
    /// Loads `dir/model.safetensors`, or every shard named by `dir/model.safetensors.index.json`,
    /// or (when `path` is a file) that one file.
    pub fn open(path: &Path) -> Result<WeightStore> {
        let files = if path.is_file() {
            vec![path.to_path_buf()]
        } else {
            shard_files(path)?
        };
        let mut store = WeightStore::default();
        for file in files {
            store.load_file(&file)?;
        }
        Ok(store)
    }

    fn load_file(&mut self, file: &Path) -> Result<()> {
        let f = File::open(file).with_context(|| format!("{}: cannot open", file.display()))?;
        // SAFETY: the mapping is read-only; a checkpoint changed on disk while mapped is
        // outside what any loader can defend against (the same holds for PyTorch's mmap loads).
        let map =
            unsafe { Mmap::map(&f) }.with_context(|| format!("{}: cannot map", file.display()))?;
        let map = Arc::new(map);
        let st = SafeTensors::deserialize(&map).with_context(|| {
            format!(
                "{}: not a valid safetensors file (truncated or corrupt?)",
                file.display()
            )
        })?;
        let base = map.as_ptr() as usize;
        for (name, view) in st.tensors() {
            let dtype = match view.dtype() {
                StDtype::F32 => DType::F32,
                StDtype::BF16 => DType::BF16,
                StDtype::F16 => DType::F16,
                other => {
                    bail!(
                        "{}: tensor {name} has dtype {other:?}; weights must be F32, BF16 or F16",
                        file.display()
                    )
                }
            };
            let offset = view.data().as_ptr() as usize - base;
            let len = view.shape().iter().product::<usize>();
            let storage = if offset.is_multiple_of(dtype.size()) {
                Storage::Mapped {
                    map: map.clone(),
                    offset,
                    len,
                    dtype,
                }
            } else {
                copy_unaligned(view.data(), dtype)
            };
            let tensor = Tensor::from_storage(storage, view.shape())
                .with_context(|| format!("{}: tensor {name}", file.display()))?;
            if self.weights.contains_key(&name) {
                bail!(
                    "{}: tensor {name} appears in more than one shard",
                    file.display()
                );
            }
            self.weights.insert(
                name,
                Weight {
                    tensor,
                    file: file.to_path_buf(),
                },
            );
        }
        Ok(())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.weights.keys().map(|s| s.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains_key(name)
    }

    /// The tensor `name`, which must have `shape`; `origin` names the checkpoint in errors.
    pub fn get(&self, name: &str, shape: &[usize], origin: &Path) -> Result<Tensor> {
        let Some(w) = self.weights.get(name) else {
            bail!(
                "{}: tensor {name} is missing from the checkpoint",
                origin.display()
            );
        };
        if w.tensor.shape() != shape {
            bail!(
                "{}: tensor {name} has shape {:?} but config.json implies {:?}",
                w.file.display(),
                w.tensor.shape(),
                shape
            );
        }
        Ok(w.tensor.clone())
    }
}

fn copy_unaligned(bytes: &[u8], dtype: DType) -> Storage {
    match dtype {
        DType::F32 => Storage::F32(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        DType::BF16 => Storage::BF16(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        DType::F16 => Storage::F16(
            bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
    }
}

/// The safetensors files of a model folder.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .with_context(|| format!("{}: cannot read", index.display()))?;
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let idx: Index = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid index", index.display()))?;
        let mut files: Vec<String> = idx.weight_map.into_values().collect();
        files.sort();
        files.dedup();
        return files
            .into_iter()
            .map(|f| {
                let p = dir.join(&f);
                if p.is_file() {
                    Ok(p)
                } else {
                    bail!("{}: shard {f} is listed but missing", index.display())
                }
            })
            .collect();
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    bail!(
        "{}: no model.safetensors or model.safetensors.index.json",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    #[test]
    fn sharded_checkpoint_maps_without_copy() {
        let dir = std::env::temp_dir().join(format!("implicit-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a: Vec<f32> = (0..6).map(|x| x as f32 * 0.5 - 1.0).collect();
        let b: Vec<bf16> = (0..4).map(|x| bf16::from_f32(x as f32)).collect();
        let ab: &[u8] = bytemuck::cast_slice(&a);
        let bb: &[u8] = bytemuck::cast_slice(&b);
        let va = TensorView::new(StDtype::F32, vec![2, 3], ab).unwrap();
        let vb = TensorView::new(StDtype::BF16, vec![4], bb).unwrap();
        safetensors::serialize_to_file([("a", va)], None, &dir.join("s1.safetensors")).unwrap();
        safetensors::serialize_to_file([("b", vb)], None, &dir.join("s2.safetensors")).unwrap();
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            r#"{"metadata":{},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}"#,
        )
        .unwrap();
        let store = WeightStore::open(&dir).unwrap();
        let ta = store.get("a", &[2, 3], &dir).unwrap();
        assert!(ta.is_mapped());
        assert_eq!(ta.to_f32_vec(), a);
        assert_eq!(
            store.get("b", &[4], &dir).unwrap().to_f32_vec(),
            vec![0.0, 1.0, 2.0, 3.0]
        );
        let e = store.get("a", &[3, 2], &dir).unwrap_err().to_string();
        assert!(e.contains("s1.safetensors") && e.contains("[2, 3]"), "{e}");
        assert!(store
            .get("c", &[1], &dir)
            .unwrap_err()
            .to_string()
            .contains("missing"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
