//! One decoding thread for the whole server: every request's sequences are decoded together,
//! one forward per step over all of them (continuous batching), each with its own KV cache,
//! sampler and adapter state, so concurrent requests share the weight reads without touching
//! each other's state.

use crate::error::{Error, Result};
use crate::generate::{step, Finish, Sequence, SequenceRequest, TokenChoice};
use crate::model::Transformer;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
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
    seq: Sequence,
}

impl Scheduler {
    /// Starts the decoding thread; at most `max_batch` sequences are decoded together (the
    /// others wait their turn).
    pub fn start(model: Arc<Transformer>, max_batch: usize) -> Result<Scheduler> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("implicit-scheduler".into())
            .spawn(move || run(&model, rx, max_batch.max(1)))
            .map_err(|e| Error(format!("cannot start the decoding thread: {e}")))?;
        Ok(Scheduler { jobs: tx })
    }

    pub fn submit(&self, job: Job) -> Result<()> {
        self.jobs
            .send(job)
            .map_err(|_| Error("the decoding thread has stopped".into()))
    }
}

fn run(model: &Transformer, jobs: mpsc::Receiver<Job>, max_batch: usize) {
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
            match Sequence::new(model, job.request.clone()) {
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
            let mut seqs: Vec<&mut Sequence> = live.iter_mut().map(|l| &mut l.seq).collect();
            catch_unwind(AssertUnwindSafe(|| step(model, &mut seqs)))
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
