//! `train --device cuda --gpus N`: data parallelism with one process per GPU. The command
//! starts N copies of itself (the same arguments) with the rank, the world size and a
//! rendezvous file in their environment; each copy trains on GPU `rank` and its share of every
//! step's micro-batches, and the ranks meet through NCCL (`backend::cuda::Communicator`): rank
//! 0 draws the NCCL id and writes it to the rendezvous file, the others read it. Rank 0 alone
//! prints progress and writes metrics and checkpoints.

use crate::bail;
use crate::error::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const RANK: &str = "IMPLICIT_RANK";
const WORLD: &str = "IMPLICIT_WORLD_SIZE";
const ID_FILE: &str = "IMPLICIT_NCCL_ID_FILE";

/// This process's place in a data-parallel run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataParallel {
    pub rank: usize,
    pub world: usize,
    /// Where rank 0 leaves the NCCL id for the others.
    pub id_file: PathBuf,
}

impl DataParallel {
    /// The rank this process was started as by [`spawn_ranks`], or None when it was not.
    pub fn from_env() -> Result<Option<DataParallel>> {
        let Ok(rank) = std::env::var(RANK) else {
            return Ok(None);
        };
        let parse = |name: &str, v: &str| -> Result<usize> {
            v.parse()
                .with_context(|| format!("{name}={v:?} is not a whole number"))
        };
        let rank = parse(RANK, &rank)?;
        let world = parse(WORLD, &std::env::var(WORLD).unwrap_or_default())?;
        let id_file = std::env::var_os(ID_FILE)
            .map(PathBuf::from)
            .with_context(|| format!("{RANK} is set but {ID_FILE} is not"))?;
        if world == 0 || rank >= world {
            bail!("{RANK}={rank} is not a rank of {WORLD}={world}");
        }
        Ok(Some(DataParallel {
            rank,
            world,
            id_file,
        }))
    }

    /// Waits for rank 0's id (at most `timeout`), and returns its bytes.
    pub fn read_id(&self, timeout: Duration) -> Result<Vec<u8>> {
        let start = Instant::now();
        loop {
            if let Ok(bytes) = std::fs::read(&self.id_file) {
                return Ok(bytes);
            }
            if start.elapsed() > timeout {
                bail!(
                    "rank {}: no NCCL id from rank 0 at {} after {}s",
                    self.rank,
                    self.id_file.display(),
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Starts `world` copies of this program with its own arguments as the ranks of one run
/// (rendezvous file in `out`), and waits for all of them. If one fails, the others are
/// stopped and the error names it.
pub fn spawn_ranks(world: usize, out: &Path) -> Result<()> {
    if world == 0 {
        bail!("--gpus must be at least 1");
    }
    let exe = std::env::current_exe().context("cannot find this program to start its ranks")?;
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let id_file = out.join(format!(".nccl-id-{}", std::process::id()));
    let _ = std::fs::remove_file(&id_file);
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(world);
    for rank in 0..world {
        let child = Command::new(&exe)
            .args(&args)
            .env(RANK, rank.to_string())
            .env(WORLD, world.to_string())
            .env(ID_FILE, &id_file)
            .spawn();
        match child {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                stop(&mut children);
                bail!("cannot start rank {rank} of {world}: {e}");
            }
        }
    }
    eprintln!("started {world} ranks (one per GPU)");
    let outcome = wait_all(&mut children);
    let _ = std::fs::remove_file(&id_file);
    outcome
}

fn stop(children: &mut [(usize, Child)]) {
    for (_, c) in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn wait_all(children: &mut Vec<(usize, Child)>) -> Result<()> {
    while !children.is_empty() {
        let mut i = 0;
        while i < children.len() {
            let (rank, child) = &mut children[i];
            match child.try_wait() {
                Ok(Some(status)) if status.success() => {
                    children.remove(i);
                }
                Ok(Some(status)) => {
                    let rank = *rank;
                    children.remove(i);
                    stop(children);
                    bail!("rank {rank} failed ({status}); the other ranks were stopped");
                }
                Ok(None) => i += 1,
                Err(e) => {
                    let rank = *rank;
                    stop(children);
                    bail!("cannot wait for rank {rank}: {e}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_read_once_written_and_a_missing_one_times_out() {
        let dir = std::env::temp_dir().join(format!("implicit-launch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dp = DataParallel {
            rank: 1,
            world: 2,
            id_file: dir.join("id"),
        };
        let err = dp.read_id(Duration::from_millis(120)).unwrap_err();
        assert!(err.to_string().contains("no NCCL id from rank 0"), "{err}");
        std::fs::write(&dp.id_file, [7u8; 128]).unwrap();
        assert_eq!(dp.read_id(Duration::from_secs(1)).unwrap(), vec![7u8; 128]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
