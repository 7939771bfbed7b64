//! The results folder: where every artifact of a grid lives, and the manifest that makes a run
//! resumable and idempotent.
//!
//! Each unit of work is a *step* with a key (`tiny/response/seed1/e2/train`), a fingerprint
//! (the settings that determine its result, as JSON) and the artifacts it writes. A step is done
//! when the manifest records it and its artifacts exist; a done step is never run again. A done
//! step whose fingerprint no longer matches the config is an error that names the step and what
//! changed, rather than a silent mix of old and new results. Artifacts are written atomically
//! and the manifest is rewritten (atomically) after every step, so a killed run loses at most
//! the step it was in.

use crate::bail;
use crate::bench::record::commit;
use crate::error::{Context, Result};
use crate::eval::sha512::sha512;
use crate::eval::write_json_atomic;
use crate::io::digest::hex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One finished step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRecord {
    pub fingerprint: Value,
    /// Artifacts, relative to the results folder.
    pub artifacts: Vec<String>,
    pub seconds: f64,
    /// Seconds since the Unix epoch when it finished.
    pub finished: u64,
    /// Figures the step reports (win rate, loss, selected epochs...).
    #[serde(default)]
    pub result: Value,
}

/// manifest.json: what produced the folder and every step's record.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct Manifest {
    pub name: String,
    /// The implicit build that made each invocation, newest last.
    pub runs: Vec<Value>,
    /// SHA-512 of each whole input file, by path.
    pub inputs: BTreeMap<String, String>,
    /// The size and modification time each input had when it was hashed, by path: a later
    /// invocation that finds both unchanged reuses the hash instead of reading the file again
    /// (a 13 GB model takes about a minute to hash). A file rewritten to the same size within
    /// the filesystem's timestamp resolution would escape this; deleting the entry (or the
    /// manifest's `input_stats`) forces a rehash.
    #[serde(default)]
    pub input_stats: BTreeMap<String, FileStat>,
    pub steps: BTreeMap<String, StepRecord>,
}

/// What identifies a file's contents cheaply: its size and modification time.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileStat {
    pub size: u64,
    /// Nanoseconds since the Unix epoch.
    pub modified_ns: u128,
    /// The whole file's hash when it had this size and time.
    pub hash: String,
}

pub struct Store {
    pub root: PathBuf,
    pub manifest: Manifest,
    started: Instant,
    /// Inputs hashed by this invocation (each file once).
    hashed: Vec<String>,
}

impl Store {
    /// Opens (or creates) a results folder; records this invocation with the config's text.
    pub fn open(root: &Path, name: &str, config_text: &str) -> Result<Store> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("{}: cannot create the results folder", root.display()))?;
        let path = root.join("manifest.json");
        let manifest = if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not an experiment manifest", path.display()))?
        } else {
            Manifest {
                name: name.to_string(),
                ..Manifest::default()
            }
        };
        let mut store = Store {
            root: root.to_path_buf(),
            manifest,
            started: Instant::now(),
            hashed: Vec::new(),
        };
        store.manifest.runs.push(json!({
            "started": unix_now(),
            "commit": commit(),
            "version": env!("CARGO_PKG_VERSION"),
            "config_sha512": hex(&sha512(config_text.as_bytes())),
            "command": std::env::args().collect::<Vec<_>>().join(" "),
        }));
        crate::io::atomic::write_atomic(&root.join("config.toml"), config_text.as_bytes())?;
        store.save()?;
        Ok(store)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn save(&self) -> Result<()> {
        write_json_atomic(&self.root.join("manifest.json"), &self.manifest)
    }

    /// Hashes an input file once per invocation (or reuses the hash an earlier invocation
    /// recorded for the same path, size and modification time) and records it under its path.
    pub fn hash_input(&mut self, path: &Path) -> Result<String> {
        let key = path.display().to_string();
        if self.hashed.contains(&key) {
            if let Some(h) = self.manifest.inputs.get(&key) {
                return Ok(h.clone());
            }
        }
        let (size, modified_ns) = file_stat(path)?;
        let h = match self.manifest.input_stats.get(&key) {
            Some(s) if s.size == size && s.modified_ns == modified_ns => s.hash.clone(),
            _ => hash_file(path)?,
        };
        self.manifest.input_stats.insert(
            key.clone(),
            FileStat {
                size,
                modified_ns,
                hash: h.clone(),
            },
        );
        self.manifest.inputs.insert(key.clone(), h.clone());
        self.hashed.push(key);
        Ok(h)
    }

    /// The record of a finished step, if it is finished with this fingerprint. Errors when it
    /// finished with another one.
    pub fn done(&self, key: &str, fingerprint: &Value) -> Result<Option<&StepRecord>> {
        let fingerprint = &as_stored(fingerprint);
        let Some(rec) = self.manifest.steps.get(key) else {
            return Ok(None);
        };
        if !rec.artifacts.iter().all(|a| self.root.join(a).exists()) {
            return Ok(None);
        }
        if &rec.fingerprint != fingerprint {
            bail!(
                "{}: step {key} was finished with other settings ({}); use a new results folder, or delete that step's artifacts to redo it",
                self.root.join("manifest.json").display(),
                describe_change(&rec.fingerprint, fingerprint)
            );
        }
        Ok(Some(rec))
    }

    /// Runs `work` unless the step is done; records it. `work` returns the step's result
    /// figures; artifacts are paths relative to the results folder that it must have written.
    pub fn step(
        &mut self,
        key: &str,
        fingerprint: Value,
        artifacts: &[&str],
        work: impl FnOnce(&Path) -> Result<Value>,
    ) -> Result<Value> {
        if let Some(rec) = self.done(key, &fingerprint)? {
            return Ok(rec.result.clone());
        }
        let t0 = Instant::now();
        eprintln!("[{}] {key}", clock(self.started.elapsed().as_secs_f64()));
        let result = work(&self.root).map_err(|e| crate::Error(format!("step {key}: {e}")))?;
        for a in artifacts {
            if !self.root.join(a).exists() {
                bail!(
                    "step {key}: finished without writing {}",
                    self.root.join(a).display()
                );
            }
        }
        self.manifest.steps.insert(
            key.to_string(),
            StepRecord {
                fingerprint: as_stored(&fingerprint),
                artifacts: artifacts.iter().map(|s| s.to_string()).collect(),
                seconds: t0.elapsed().as_secs_f64(),
                finished: unix_now(),
                result: result.clone(),
            },
        );
        self.save()?;
        Ok(result)
    }

    /// Whether a step's record exists (finished at some point), whatever its fingerprint.
    pub fn has(&self, key: &str) -> bool {
        self.manifest.steps.contains_key(key)
    }
}

/// `v` as it reads back from manifest.json: JSON text does not carry every float bit for bit
/// (an f32 0.03 widened to f64 reads back one ulp off), so fingerprints compare in this form.
fn as_stored(v: &Value) -> Value {
    serde_json::to_string(v)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| v.clone())
}

/// What differs between two fingerprints, for the error message.
fn describe_change(old: &Value, new: &Value) -> String {
    match (old.as_object(), new.as_object()) {
        (Some(a), Some(b)) => {
            let mut diffs = Vec::new();
            for (k, v) in b {
                match a.get(k) {
                    Some(old_v) if old_v == v => {}
                    Some(old_v) => diffs.push(format!("{k}: {old_v} -> {v}")),
                    None => diffs.push(format!("{k}: (none) -> {v}")),
                }
            }
            for k in a.keys().filter(|k| !b.contains_key(*k)) {
                diffs.push(format!("{k}: removed"));
            }
            diffs.join(", ")
        }
        _ => format!("{old} -> {new}"),
    }
}

/// A file's size and modification time (nanoseconds since the Unix epoch).
fn file_stat(path: &Path) -> Result<(u64, u128)> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("{}: cannot stat", path.display()))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok((meta.len(), modified))
}

/// SHA-512 of a whole file, read in 1 MiB pieces (constant memory whatever its size).
pub fn hash_file(path: &Path) -> Result<String> {
    let (_, digest) = crate::io::digest::file_digest::<sha2::Sha512>(path)?;
    Ok(format!("sha512:{digest}"))
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn clock(secs: f64) -> String {
    let s = secs as u64;
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_run_once_and_fingerprints_are_checked() {
        let dir = std::env::temp_dir().join(format!("implicit-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = Store::open(&dir, "t", "name = \"t\"\n").unwrap();
        let mut runs = 0;
        for _ in 0..2 {
            let r = store
                .step("a/b", json!({"lr": 1}), &["a/b.json"], |root| {
                    runs += 1;
                    write_json_atomic(&root.join("a/b.json"), &json!({"x": 1}))?;
                    Ok(json!({"win_rate": 42.0}))
                })
                .unwrap();
            assert_eq!(r["win_rate"], 42.0);
        }
        assert_eq!(runs, 1);
        // Reopened: still done.
        let mut store = Store::open(&dir, "t", "name = \"t\"\n").unwrap();
        assert_eq!(store.manifest.runs.len(), 2);
        store
            .step("a/b", json!({"lr": 1}), &["a/b.json"], |_| {
                panic!("ran twice")
            })
            .unwrap();
        // Another fingerprint: an error naming the step and the change.
        let e = store
            .step("a/b", json!({"lr": 2}), &["a/b.json"], |_| Ok(Value::Null))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a/b") && e.contains("lr: 1 -> 2"), "{e}");
        // A deleted artifact: the step runs again.
        std::fs::remove_file(dir.join("a/b.json")).unwrap();
        let mut again = false;
        store
            .step("a/b", json!({"lr": 1}), &["a/b.json"], |root| {
                again = true;
                write_json_atomic(&root.join("a/b.json"), &json!({}))?;
                Ok(Value::Null)
            })
            .unwrap();
        assert!(again);
        // A step that does not write its artifact fails.
        assert!(store
            .step("c", json!({}), &["c.json"], |_| Ok(Value::Null))
            .is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_hashes() {
        let dir = std::env::temp_dir().join(format!("implicit-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert!(hash_file(&p)
            .unwrap()
            .starts_with("sha512:ddaf35a193617aba"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Two 80 MiB files equal in size and in their first and last 8 MiB but one byte apart in
    /// the middle: the sampled hash this replaced gave them the same fingerprint.
    #[test]
    fn files_differing_only_in_the_middle_hash_differently() {
        let dir = std::env::temp_dir().join(format!("implicit-hash-mid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut bytes: Vec<u8> = (0..80usize << 20).map(|i| (i % 251) as u8).collect();
        let (a, b) = (dir.join("a.bin"), dir.join("b.bin"));
        std::fs::write(&a, &bytes).unwrap();
        bytes[40 << 20] ^= 1;
        std::fs::write(&b, &bytes).unwrap();
        let t0 = Instant::now();
        let ha = hash_file(&a).unwrap();
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "hashed 80 MiB in {secs:.3}s: {:.0} MB/s",
            80.0 * 1.048576 / secs
        );
        assert_ne!(ha, hash_file(&b).unwrap());
        // The stat cache: an unchanged file reuses its hash; a changed size rehashes.
        let mut store = Store::open(&dir.join("results"), "t", "").unwrap();
        assert_eq!(store.hash_input(&a).unwrap(), ha);
        store.save().unwrap();
        let mut store = Store::open(&dir.join("results"), "t", "").unwrap();
        assert_eq!(
            store.manifest.input_stats[&a.display().to_string()].hash,
            ha
        );
        assert_eq!(store.hash_input(&a).unwrap(), ha);
        std::fs::write(&a, b"abc").unwrap();
        let mut store = Store::open(&dir.join("results"), "t", "").unwrap();
        assert!(store
            .hash_input(&a)
            .unwrap()
            .starts_with("sha512:ddaf35a193617aba"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
