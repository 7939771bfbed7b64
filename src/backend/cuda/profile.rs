//! The step profile's recorder (`implicit bench train --profile`): when on, every kernel launch
//! (`launch!`), copy, memset and cuBLAS call made through the backend is bracketed by two timing
//! events on the stream, tagged with the kernel's name and the phase the caller set last
//! ([`CudaBackend::profile_phase`]: the trainer's forward, loss, recompute, backward, …).
//! [`CudaBackend::profile_finish`] waits for the stream and returns plain spans in milliseconds
//! from the origin event recorded at [`CudaBackend::profile_start`]; `bench::train::profile`
//! turns them into the table by kernel family and phase.
//!
//! Off by default, and then each launch pays one relaxed atomic load. The events come from a
//! pool kept between profiles, so a second profiled step creates none (creating an event is a
//! driver call, recording one is cheaper). While the stream is capturing a CUDA graph nothing is
//! recorded: a captured launch runs later, at the graph's replay.

use super::{driver_error, CudaBackend};
use crate::bail;
use crate::error::Result;
use cudarc::driver::{sys, CudaEvent};
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

/// The phase of work queued before the caller names one.
const UNNAMED_PHASE: &str = "unphased";

/// One bracketed piece of GPU work, as [`CudaBackend::profile_finish`] returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileSpan {
    /// The kernel's name (kernels/*.cu), or the copy's (`memcpy_htod`, `memcpy_dtoh`,
    /// `memcpy_dtod`, `memset_zeros`, `alloc_zeros`), or `cublasGemmStridedBatchedEx`.
    pub name: &'static str,
    /// The phase set when it was queued.
    pub phase: &'static str,
    /// Milliseconds from the origin event to the span's start and end events.
    pub start_ms: f64,
    pub end_ms: f64,
}

/// A finished profile: the spans in queue order and the time from the origin event to the
/// event recorded by [`CudaBackend::profile_finish`].
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedProfile {
    pub spans: Vec<ProfileSpan>,
    pub total_ms: f64,
}

/// A span whose events are recorded, not yet read.
struct Pending {
    name: &'static str,
    phase: &'static str,
    start: usize,
    end: usize,
}

/// The recorder's state (in `CudaBackend::profiler`, behind the `profiling` flag).
#[derive(Default)]
pub(super) struct Recorder {
    /// The event pool; `events[0]` is the origin while a profile runs.
    events: Vec<CudaEvent>,
    /// Events of the pool recorded in this profile.
    used: usize,
    spans: Vec<Pending>,
    phase: &'static str,
}

/// A started span: the index of its start event (None when nothing was recorded).
#[must_use]
pub(crate) struct ProfileMark(Option<(usize, &'static str)>);

impl Recorder {
    /// Records the next event of the pool on the backend's stream; returns its index.
    fn record(&mut self, gpu: &CudaBackend) -> Result<usize> {
        if self.used == self.events.len() {
            let event = gpu
                .ctx
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| driver_error("creating a profiling event", e))?;
            self.events.push(event);
        }
        let index = self.used;
        self.events[index]
            .record(&gpu.stream)
            .map_err(|e| driver_error("recording a profiling event", e))?;
        self.used += 1;
        Ok(index)
    }
}

impl CudaBackend {
    fn profiler(&self) -> MutexGuard<'_, Recorder> {
        match self.profiler.lock() {
            Ok(g) => g,
            // A panic while recording leaves at worst a partial profile, which finish reads.
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether a profile is being recorded.
    pub fn profiling(&self) -> bool {
        self.profiling.load(Ordering::Relaxed)
    }

    /// Starts recording: the origin event now, then two events around every launch until
    /// [`CudaBackend::profile_finish`]. An error when a profile is already running.
    pub fn profile_start(&self) -> Result<()> {
        if self.profiling() {
            bail!("CUDA profile: profile_start called while a profile is already running");
        }
        let mut r = self.profiler();
        r.used = 0;
        r.spans.clear();
        r.phase = UNNAMED_PHASE;
        r.record(self)?;
        self.profiling.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Names the phase of the work queued from now on (a no-op when not profiling).
    pub fn profile_phase(&self, phase: &'static str) {
        if self.profiling() {
            self.profiler().phase = phase;
        }
    }

    /// Stops recording, waits for the stream and reads every span's events.
    pub fn profile_finish(&self) -> Result<RecordedProfile> {
        if !self.profiling() {
            bail!("CUDA profile: profile_finish called without profile_start");
        }
        self.profiling.store(false, Ordering::Relaxed);
        let mut r = self.profiler();
        let end = r.record(self)?;
        self.synchronize()?;
        let since_origin = |i: usize| -> Result<f64> {
            let ms = r.events[0]
                .elapsed_ms(&r.events[i])
                .map_err(|e| driver_error("reading a profiling event", e))?;
            Ok(ms as f64)
        };
        let mut spans = Vec::with_capacity(r.spans.len());
        for p in &r.spans {
            spans.push(ProfileSpan {
                name: p.name,
                phase: p.phase,
                start_ms: since_origin(p.start)?,
                end_ms: since_origin(p.end)?,
            });
        }
        let total_ms = since_origin(end)?;
        r.spans.clear();
        Ok(RecordedProfile { spans, total_ms })
    }

    /// Before a launch or copy named `name`: its start event when profiling (and the stream
    /// is not capturing a graph).
    pub(crate) fn profile_before(&self, name: &'static str) -> Result<ProfileMark> {
        if !self.profiling() || self.capturing() {
            return Ok(ProfileMark(None));
        }
        let start = self.profiler().record(self)?;
        Ok(ProfileMark(Some((start, name))))
    }

    /// After the launch or copy: its end event, and the span.
    pub(crate) fn profile_after(&self, mark: ProfileMark) -> Result<()> {
        let Some((start, name)) = mark.0 else {
            return Ok(());
        };
        let mut r = self.profiler();
        let end = r.record(self)?;
        let phase = r.phase;
        r.spans.push(Pending {
            name,
            phase,
            start,
            end,
        });
        Ok(())
    }

    /// Runs `work` (one launch or copy queued on the stream) as a span named `name`.
    pub(crate) fn profiled<T>(
        &self,
        name: &'static str,
        work: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let mark = self.profile_before(name)?;
        let out = work()?;
        self.profile_after(mark)?;
        Ok(out)
    }
}
