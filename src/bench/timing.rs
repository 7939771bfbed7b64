//! Timing GPU work with CUDA events, for `implicit bench kernels` (.library/device/METHOD.md):
//! warm-up first, then many samples, the median reported with the minimum and maximum.
//!
//! Each sample is: a 512 MiB device-to-device copy (the "spacer": it evicts the L2 cache, and
//! while the GPU runs it the host queues the sample's launches, so they run back to back
//! instead of waiting on the host), a start event, `launches_per_sample` launches of the work
//! (so a sample lasts at least ~100 µs when one launch is shorter), an end event, a
//! synchronisation. A sample's time is the events' interval over the launches it holds.
//! When the host took longer to queue a sample's launches than the spacer ran, the GPU may have
//! waited for them: [`Timing::host_bound`] says so.

use crate::backend::cuda::{driver_error, CudaBackend, DeviceBuffer};
use crate::error::Result;
use cudarc::driver::{sys, CudaEvent};
use serde::Serialize;
use std::time::Instant;

/// Bytes of each spacer buffer (the copy moves twice this: read and written).
pub(crate) const SPACER_BYTES: usize = 512 << 20;
/// A sample holds launches for at least this long on the GPU (when one is shorter).
const SAMPLE_TARGET_US: f64 = 100.0;
/// At most this many launches per sample.
const MAX_LAUNCHES_PER_SAMPLE: usize = 32;
/// Warm-up launches before the estimate (module load, first-touch, cuBLAS heuristics).
const WARMUP_LAUNCHES: usize = 3;
/// After the estimate, more warm-up until about this much GPU time was spent (clocks up).
const WARMUP_US: f64 = 5_000.0;

/// One timed piece of work: microseconds per launch.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    pub median_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    /// Samples the median is taken over.
    pub samples: usize,
    /// Launches back to back in each sample (its time is divided by this).
    pub launches_per_sample: usize,
    /// The host's median time to queue one sample's launches, in µs.
    pub host_queue_us: f64,
    /// The host took longer to queue a sample than the spacer ran: the GPU may have idled
    /// between launches, so the time may be the host's launch rate rather than the kernel's.
    pub host_bound: bool,
}

/// Median, minimum and maximum of `v` (not empty).
fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    };
    (median, v[0], v[n - 1])
}

/// Events, the spacer buffers and the sample count; see the module docs.
pub(crate) struct Timer<'a> {
    gpu: &'a CudaBackend,
    start: CudaEvent,
    end: CudaEvent,
    spacer_src: DeviceBuffer<u32>,
    spacer_dst: DeviceBuffer<u32>,
    /// How long one spacer copy runs, µs (measured once).
    spacer_us: f64,
    samples: usize,
}

impl<'a> Timer<'a> {
    /// `spacer_src` is filled by the caller (random data: a copy's speed does not depend on
    /// it, but nothing here is timed on zeros).
    pub(crate) fn new(
        gpu: &'a CudaBackend,
        spacer_src: DeviceBuffer<u32>,
        samples: usize,
    ) -> Result<Timer<'a>> {
        let event = || {
            gpu.ctx
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| driver_error("creating a timing event", e))
        };
        let spacer_dst = gpu.alloc::<u32>(spacer_src.len())?;
        let mut timer = Timer {
            gpu,
            start: event()?,
            end: event()?,
            spacer_src,
            spacer_dst,
            spacer_us: 0.0,
            samples: samples.max(1),
        };
        let copy = timer.time_copy(5)?;
        timer.spacer_us = copy.min_us;
        Ok(timer)
    }

    /// One spacer copy, queued.
    fn spacer(&mut self) -> Result<()> {
        self.gpu
            .stream()
            .memcpy_dtod(&self.spacer_src.slice, &mut self.spacer_dst.slice)
            .map_err(|e| driver_error("the benchmark's device-to-device copy", e))
    }

    fn record(&self, event: &CudaEvent) -> Result<()> {
        event
            .record(self.gpu.stream())
            .map_err(|e| driver_error("recording a timing event", e))
    }

    /// µs between the start and end events (waits for both).
    fn elapsed_us(&self) -> Result<f64> {
        let ms = self
            .start
            .elapsed_ms(&self.end)
            .map_err(|e| driver_error("reading a timing event", e))?;
        Ok(ms as f64 * 1e3)
    }

    /// The device-to-device copy of [`SPACER_BYTES`] (`samples` samples after two warm-ups),
    /// the bandwidth ceiling: each sample is one copy between two events.
    pub(crate) fn time_copy(&mut self, samples: usize) -> Result<Timing> {
        for _ in 0..2 {
            self.spacer()?;
        }
        self.gpu.synchronize()?;
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples.max(1) {
            self.record(&self.start)?;
            self.spacer()?;
            self.record(&self.end)?;
            times.push(self.elapsed_us()?);
            self.gpu.synchronize()?;
        }
        let (median_us, min_us, max_us) = stats(&mut times);
        Ok(Timing {
            median_us,
            min_us,
            max_us,
            samples: times.len(),
            launches_per_sample: 1,
            host_queue_us: 0.0,
            host_bound: false,
        })
    }

    /// Bytes moved (read + written) by one [`Timer::time_copy`] copy.
    pub(crate) fn copy_bytes(&self) -> f64 {
        2.0 * (self.spacer_src.len() * 4) as f64
    }

    pub(crate) fn samples(&self) -> usize {
        self.samples
    }

    /// Times `launch` (called with 0, 1, 2, ...: the index picks the input set), see the module
    /// docs. Every call's error is returned, and the stream is synchronised (and checked) after
    /// every sample.
    pub(crate) fn time(&mut self, launch: &mut dyn FnMut(usize) -> Result<()>) -> Result<Timing> {
        let mut index = 0usize;
        let mut run = |n: usize, index: &mut usize| -> Result<()> {
            for _ in 0..n {
                launch(*index)?;
                *index += 1;
            }
            Ok(())
        };
        run(WARMUP_LAUNCHES, &mut index)?;
        self.gpu.synchronize()?;
        // Estimate one launch's time, then warm up for about WARMUP_US.
        self.record(&self.start)?;
        run(WARMUP_LAUNCHES, &mut index)?;
        self.record(&self.end)?;
        let estimate = (self.elapsed_us()? / WARMUP_LAUNCHES as f64).max(0.5);
        let more = ((WARMUP_US / estimate) as usize).min(200);
        run(more, &mut index)?;
        self.gpu.synchronize()?;

        let per_sample =
            ((SAMPLE_TARGET_US / estimate).ceil() as usize).clamp(1, MAX_LAUNCHES_PER_SAMPLE);
        let mut times = Vec::with_capacity(self.samples);
        let mut host = Vec::with_capacity(self.samples);
        for _ in 0..self.samples {
            self.spacer()?;
            let queued = Instant::now();
            self.record(&self.start)?;
            run(per_sample, &mut index)?;
            self.record(&self.end)?;
            host.push(queued.elapsed().as_secs_f64() * 1e6);
            times.push(self.elapsed_us()? / per_sample as f64);
            self.gpu.synchronize()?;
        }
        let (median_us, min_us, max_us) = stats(&mut times);
        let (host_queue_us, _, _) = stats(&mut host);
        Ok(Timing {
            median_us,
            min_us,
            max_us,
            samples: times.len(),
            launches_per_sample: per_sample,
            host_queue_us,
            host_bound: host_queue_us > self.spacer_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::stats;

    #[test]
    fn median_min_max() {
        assert_eq!(stats(&mut [3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(stats(&mut [4.0, 1.0, 3.0, 2.0]), (2.5, 1.0, 4.0));
        assert_eq!(stats(&mut [7.0]), (7.0, 7.0, 7.0));
    }
}
