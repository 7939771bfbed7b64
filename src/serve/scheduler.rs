//! One decoding thread for the whole server: every request's sequences are decoded together,
//! one forward per step over all of them (continuous batching), each with its own KV cache,
//! sampler and adapter state, so concurrent requests share the weight reads without touching
//! each other's state. The thread opens the device and owns the model (`model::device`): the
//! forward pass is CPU/GPU-bound, so it stays off the async runtime, which talks to it over
//! channels.

use crate::backend::Device;
use crate::error::{Error, Result};
use crate::generate::{step, Finish, Sequence, SequenceRequest, TokenChoice};
use crate::model::{DeviceCache, DeviceModel, DeviceRuntime, LanguageModel, ModelConfig};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

/// What the scheduler reports about a sequence.
#[derive(Debug)]
pub enum Event {
    Token(TokenChoice),
    Done(Finish),
    /// The sequence could not be decoded (bad prompt, a failed forward pass).
    Failed(String),
}

/// One sequence to decode; events go to `events` tagged with `index`.
pub struct Job {
    pub index: usize,
    pub request: SequenceRequest,
    pub events: mpsc::Sender<(usize, Event)>,
    /// Set by the requester to stop early (a stop string matched, the client left).
    pub cancel: Arc<AtomicBool>,
}

/// The handle requests submit jobs through.
#[derive(Clone)]
pub struct Scheduler {
    jobs: mpsc::Sender<Job>,
}

struct Live {
    job: Job,
    seq: Sequence<DeviceCache>,
}

/// What the decoding thread loaded.
pub struct Loaded {
    pub config: ModelConfig,
    /// "CPU" or the GPU's name.
    pub device: String,
}

impl Scheduler {
    /// Starts the decoding thread, which opens `device` and loads the model folder `dir` onto
    /// it (an error here when either fails); at most `max_batch` sequences are decoded together
    /// (the others wait their turn).
    pub fn start(dir: PathBuf, device: Device, max_batch: usize) -> Result<(Scheduler, Loaded)> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Loaded>>();
        std::thread::Builder::new()
            .name("implicit-scheduler".into())
            .spawn(move || {
                let runtime =
                    match DeviceRuntime::open(device, "--device cuda", ", or use --device cpu") {
                        Ok(r) => r,
                        Err(e) => return drop(ready_tx.send(Err(e))),
                    };
                let mut model = match runtime.load(&dir) {
                    Ok(m) => m,
                    Err(e) => return drop(ready_tx.send(Err(e))),
                };
                let loaded = Loaded {
                    config: model.config().clone(),
                    device: runtime.name(),
                };
                if ready_tx.send(Ok(loaded)).is_ok() {
                    run(&mut model, rx, max_batch.max(1));
                }
            })
            .map_err(|e| Error(format!("cannot start the decoding thread: {e}")))?;
        let loaded = ready_rx
            .recv()
            .map_err(|_| Error("the decoding thread stopped while loading the model".into()))??;
        Ok((Scheduler { jobs: tx }, loaded))
    }

    pub fn submit(&self, job: Job) -> Result<()> {
        self.jobs
            .send(job)
            .map_err(|_| Error("the decoding thread has stopped".into()))
    }
}

fn run(model: &mut DeviceModel<'_>, jobs: mpsc::Receiver<Job>, max_batch: usize) {
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut live: Vec<Live> = Vec::new();
    loop {
        if live.is_empty() && waiting.is_empty() {
            match jobs.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => return, // the server is gone
            }
        }
        waiting.extend(jobs.try_iter());
        waiting.retain(|j| !j.cancel.load(Ordering::Relaxed));
        while live.len() < max_batch {
            let Some(job) = waiting.pop_front() else {
                break;
            };
            match Sequence::new(&*model, job.request.clone()) {
                Ok(seq) if seq.finish().is_some() => {
                    let _ = job.events.send((job.index, Event::Done(Finish::Length)));
                }
                Ok(seq) => live.push(Live { job, seq }),
                Err(e) => {
                    let _ = job.events.send((job.index, Event::Failed(e.to_string())));
                }
            }
        }
        live.retain(|l| !l.job.cancel.load(Ordering::Relaxed));
        if live.is_empty() {
            continue;
        }
        let result = {
            let mut seqs: Vec<&mut Sequence<DeviceCache>> =
                live.iter_mut().map(|l| &mut l.seq).collect();
            catch_unwind(AssertUnwindSafe(|| step(&mut *model, &mut seqs)))
        };
        let choices = match result {
            Ok(Ok(choices)) => choices,
            failed => {
                let msg = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "the forward pass panicked".to_string(),
                };
                for l in live.drain(..) {
                    let _ = l.job.events.send((l.job.index, Event::Failed(msg.clone())));
                }
                continue;
            }
        };
        let mut still = Vec::with_capacity(live.len());
        for (l, choice) in live.drain(..).zip(choices) {
            // A send fails when the requester has gone: the sequence is dropped.
            if l.job
                .events
                .send((l.job.index, Event::Token(choice)))
                .is_err()
            {
                continue;
            }
            match l.seq.finish() {
                Some(f) => {
                    let _ = l.job.events.send((l.job.index, Event::Done(f)));
                }
                None => still.push(l),
            }
        }
        live = still;
    }
}
