//! One decoding thread for the whole server: every request's sequences are decoded together,
//! one forward per step over all of them (continuous batching), each with its own KV cache,
//! sampler and adapter state, so concurrent requests share the weight reads without touching
//! each other's state. The thread opens the device and owns the model (`model::device`): the
//! forward pass is CPU/GPU-bound, so it stays off the async runtime, which talks to it over
//! channels.
//!
//! A request that arrives while others decode joins at the next step: its prompt is prefilled
//! in the same forward as the others' decode tokens (ragged, no padding). So that a burst of
//! arrivals does not stall the running sequences for one long prefill, the prompts joining in
//! one step hold at most `prefill_tokens` tokens between them while others decode
//! ([`joining`]); with nothing decoding, every waiting request joins at once (up to the batch),
//! the fastest way to everyone's first token.

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
    /// (the others wait their turn), and joining prompts hold at most `prefill_tokens` tokens a
    /// step while others decode ([`joining`]).
    pub fn start(
        dir: PathBuf,
        device: Device,
        max_batch: usize,
        prefill_tokens: usize,
    ) -> Result<(Scheduler, Loaded)> {
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
                    run(&mut model, rx, max_batch.max(1), prefill_tokens.max(1));
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

/// How many of the waiting requests (their prompt lengths in arrival order) join the batch this
/// step, when `decoding` sequences are running: up to `max_batch` in all; while some decode, the
/// joining prompts hold at most `prefill_tokens` tokens together (the first one joins whatever
/// its length, so that none waits forever); with none decoding, nobody would be stalled and
/// all join.
pub fn joining(
    waiting: impl IntoIterator<Item = usize>,
    decoding: usize,
    max_batch: usize,
    prefill_tokens: usize,
) -> usize {
    let room = max_batch.saturating_sub(decoding);
    let mut tokens = 0usize;
    let mut n = 0;
    for len in waiting.into_iter().take(room) {
        if decoding > 0 && n > 0 && tokens.saturating_add(len) > prefill_tokens {
            break;
        }
        tokens = tokens.saturating_add(len);
        n += 1;
    }
    n
}

fn run(
    model: &mut DeviceModel<'_>,
    jobs: mpsc::Receiver<Job>,
    max_batch: usize,
    prefill_tokens: usize,
) {
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
        let join = joining(
            waiting.iter().map(|j| j.request.prompt.len()),
            live.len(),
            max_batch,
            prefill_tokens,
        );
        for job in waiting.drain(..join) {
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

#[cfg(test)]
mod tests {
    use super::joining;

    #[test]
    fn joining_prompts_share_a_step_within_the_prefill_budget_while_others_decode() {
        // Nothing decoding: everyone joins, up to the batch.
        assert_eq!(joining([128; 70], 0, 64, 2048), 64);
        // 16 decoding: prompts of 128 join 16 at a time (2048 tokens), within the room left.
        assert_eq!(joining([128; 70], 16, 64, 2048), 16);
        assert_eq!(joining([128; 70], 60, 64, 2048), 4);
        assert_eq!(joining([128; 70], 64, 64, 2048), 0);
        // A prompt longer than the budget still joins, alone; the next one waits.
        assert_eq!(joining([5000, 10], 3, 64, 2048), 1);
        // Order is kept: a long prompt behind short ones waits for the next step.
        assert_eq!(joining([1000, 1000, 100, 10], 1, 64, 2048), 2);
        assert_eq!(joining(std::iter::empty(), 5, 64, 2048), 0);
    }
}
