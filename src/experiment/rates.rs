//! Generation throughputs at the batch size a config generates with, from `bench generate`'s
//! JSON, which measures a few batch sizes (1 and 64 by default).
//!
//! A decode step reads every weight once and then does per-row work (products, attention over
//! each row's cache), so its time is close to affine in the batch: s(b) = s₀ + c·b. The rate at
//! the config's batch B therefore comes from the step times s = b / (tokens/s) of the measured
//! batches around B, interpolated linearly, and is B / s(B). Taking the nearest measured batch
//! instead picks batch 1 for a config at 32 when 1 and 64 were measured, and prices generation
//! at the single-sequence rate (116 against ~2,000 tokens/s on an H100). Below the smallest
//! measured batch the step time is taken as that batch's (a step cannot get slower with fewer
//! rows, so the rate is a lower bound); above the largest, the line through the two largest is
//! extended (or, with one measured batch, the step time grows in proportion to the batch, no
//! faster than all-per-row work). Prefill, a batch of prompts of the bench's length, is treated
//! the same way in time per batch.

use crate::bail;
use crate::bench::generate::MAX_BATCH;
use crate::error::Result;
use std::path::Path;

/// One measured batch: its size and rate (tokens per second, all rows together).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    pub batch: f64,
    pub tokens_per_s: f64,
}

/// The rate at `batch` from `measured` (any order), as the module doc says, and how it was
/// obtained. None when nothing usable was measured.
pub fn rate_at(measured: &[Measured], batch: usize) -> Option<(f64, String)> {
    let mut rows: Vec<Measured> = measured
        .iter()
        .copied()
        // Batches bench generate can measure (whole, 1 to its MAX_BATCH); others are not a
        // measurement.
        .filter(|m| {
            m.batch.fract() == 0.0
                && (1.0..=MAX_BATCH as f64).contains(&m.batch)
                && m.tokens_per_s.is_finite()
                && m.tokens_per_s > 0.0
        })
        .collect();
    rows.sort_by(|a, b| a.batch.total_cmp(&b.batch));
    rows.dedup_by(|a, b| a.batch == b.batch);
    let b = batch.max(1) as f64;
    let step = |m: &Measured| m.batch / m.tokens_per_s;
    let (first, last) = (rows.first()?, rows.last()?);
    let (seconds, how) = if let Some(m) = rows.iter().find(|m| m.batch == b) {
        (step(m), format!("measured at batch {b}"))
    } else if b < first.batch {
        (
            step(first),
            format!("batch {}'s step time (smallest measured)", first.batch),
        )
    } else if b > last.batch {
        match rows.len() {
            1 => (
                step(last) * b / last.batch,
                format!("batch {}'s step time scaled by the batch", last.batch),
            ),
            n => {
                let lo = &rows[n - 2];
                let slope = (step(last) - step(lo)) / (last.batch - lo.batch);
                (
                    step(last) + slope.max(0.0) * (b - last.batch),
                    format!(
                        "step time extrapolated from batches {} and {}",
                        lo.batch, last.batch
                    ),
                )
            }
        }
    } else {
        let hi = rows.iter().position(|m| m.batch > b)?;
        let (lo, hi) = (&rows[hi - 1], &rows[hi]);
        let t = (b - lo.batch) / (hi.batch - lo.batch);
        (
            step(lo) + t * (step(hi) - step(lo)),
            format!(
                "step time interpolated between batches {} and {}",
                lo.batch, hi.batch
            ),
        )
    };
    Some((b / seconds, how))
}

/// Prefill and decode rates at `batch` from a `bench generate --json` file's value, with a note
/// saying how they were obtained.
pub fn generation_rates(
    bench: &serde_json::Value,
    batch: usize,
    path: &Path,
) -> Result<(Option<f64>, f64, String)> {
    let rows = bench["results"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let measured = |phase: &str| -> Vec<Measured> {
        rows.iter()
            .filter_map(|r| {
                Some(Measured {
                    batch: r["batch"].as_f64()?,
                    tokens_per_s: r[phase]["tokens_per_s"].as_f64()?,
                })
            })
            .collect()
    };
    let Some((decode, how)) = rate_at(&measured("decode"), batch) else {
        bail!(
            "{}: no decode results (a `bench generate --json` file?)",
            path.display()
        );
    };
    let prefill = rate_at(&measured("prefill"), batch).map(|(rate, _)| rate);
    Ok((prefill, decode, format!("batch {batch}: {how}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(batch: f64, tokens_per_s: f64) -> Measured {
        Measured {
            batch,
            tokens_per_s,
        }
    }

    #[test]
    fn a_batch_between_two_measured_ones_interpolates_the_step_time() {
        // The H100 run of 2026-12-06: batch 1 at 115.9 tokens/s (8.63 ms a step), batch 64 at
        // 2886.0 (22.18 ms). Batch 32: 8.63 + 31/63 · 13.55 = 15.30 ms, 32 / 15.30 ms.
        let rows = [m(64.0, 2886.0475), m(1.0, 115.9363)];
        let (rate, how) = rate_at(&rows, 32).unwrap();
        let s1 = 1.0 / 115.9363;
        let s64 = 64.0 / 2886.0475;
        let want = 32.0 / (s1 + 31.0 / 63.0 * (s64 - s1));
        assert!((rate - want).abs() < 1e-9 * want, "{rate} vs {want}");
        assert!((2000.0..2200.0).contains(&rate), "{rate}");
        assert!(
            how.contains("interpolated between batches 1 and 64"),
            "{how}"
        );
        // Exact at the measured ones.
        assert!((rate_at(&rows, 1).unwrap().0 - 115.9363).abs() < 1e-9);
        assert!((rate_at(&rows, 64).unwrap().0 - 2886.0475).abs() < 1e-9);
    }

    #[test]
    fn outside_the_measured_batches_the_rate_is_bounded() {
        let rows = [m(4.0, 400.0), m(8.0, 640.0)]; // steps of 10 ms and 12.5 ms
                                                   // Below: batch 4's 10 ms step, so batch 2 gets 200 tokens/s.
        assert!((rate_at(&rows, 2).unwrap().0 - 200.0).abs() < 1e-9);
        // Above: the line through 4 and 8 (0.625 ms per row) gives 17.5 ms at 16.
        assert!((rate_at(&rows, 16).unwrap().0 - 16.0 / 0.0175).abs() < 1e-6);
        // One batch measured: the step grows with the batch, the rate stays.
        assert!((rate_at(&rows[..1], 16).unwrap().0 - 400.0).abs() < 1e-9);
        // Nothing usable.
        assert!(rate_at(&[m(1.0, f64::NAN), m(0.0, 5.0)], 4).is_none());
        assert!(rate_at(&[m(1e30, 100.0), m(2.5, 100.0), m(1.0, -1.0)], 4).is_none());
    }

    #[test]
    fn rates_come_from_a_bench_generate_file() {
        let v = serde_json::json!({"results": [
            {"batch": 1, "prefill": {"tokens_per_s": 5702.5}, "decode": {"tokens_per_s": 115.9}},
            {"batch": 64, "prefill": {"tokens_per_s": 18832.4}, "decode": {"tokens_per_s": 2886.0}}
        ]});
        let (prefill, decode, note) = generation_rates(&v, 32, Path::new("g.json")).unwrap();
        assert!(decode > 2000.0 && decode < 2886.0, "{decode}");
        let prefill = prefill.unwrap();
        assert!(prefill > 5702.5 && prefill < 18832.4, "{prefill}");
        assert!(note.starts_with("batch 32: "), "{note}");
        let err = generation_rates(&serde_json::json!({}), 32, Path::new("g.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("g.json: no decode results"), "{err}");
    }
}
