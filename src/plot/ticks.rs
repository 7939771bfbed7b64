//! "Nice" axis ticks: steps of 1, 2 or 5 times a power of ten, covering the data range.

/// At most this many ticks are ever returned, whatever the input.
const MAX_TICKS: usize = 50;

/// Tick values at a nice step (1, 2 or 5 x 10^k) from a multiple of the step at or below `lo`
/// to one at or above `hi`, aiming at about `target` ticks. Swapped bounds are reordered; an
/// empty range (lo == hi) is widened around the value; non-finite bounds give `[0, 1]`'s ticks.
/// Always returns at least two increasing values.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let (mut lo, mut hi) = if lo.is_finite() && hi.is_finite() {
        (lo.min(hi), lo.max(hi))
    } else {
        (0.0, 1.0)
    };
    if lo == hi {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo, hi) = (lo - pad, hi + pad);
    }
    let step = nice_step((hi - lo) / target.max(2).saturating_sub(1) as f64);
    if !step.is_finite() || step <= 0.0 {
        return vec![lo, hi];
    }
    let first = (lo / step + 1e-9).floor();
    let last = (hi / step - 1e-9).ceil();
    let n = (last - first).round();
    if !(n >= 1.0 && n < MAX_TICKS as f64) {
        return vec![lo, hi];
    }
    (0..=n as usize)
        .map(|k| {
            let v = (first + k as f64) * step;
            if v.abs() < step * 1e-9 {
                0.0
            } else {
                v
            }
        })
        .collect()
}

/// The smallest of 1, 2, 5, 10 times a power of ten that is at least `raw`.
pub fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return f64::NAN;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 + 1e-9 {
        1.0
    } else if norm <= 2.0 + 1e-9 {
        2.0
    } else if norm <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// The step between consecutive ticks (1 for fewer than two ticks).
pub fn tick_step(ticks: &[f64]) -> f64 {
    match ticks {
        [a, b, ..] => b - a,
        _ => 1.0,
    }
}

/// A tick label with as many decimals as the step needs: 0.25 steps of 0.05 give "0.25",
/// 40 in steps of 20 gives "40". Huge steps use exponent notation; "-0" never appears.
pub fn format_tick(value: f64, step: f64) -> String {
    if !value.is_finite() {
        return format!("{value}");
    }
    let step = step.abs();
    if step >= 1e6 {
        return format!("{value:e}");
    }
    let decimals = if step > 0.0 && step.is_finite() {
        (-(step.log10() + 1e-9).floor()).clamp(0.0, 12.0) as usize
    } else {
        2
    };
    let s = format!("{value:.decimals$}");
    if s.trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        s.trim_start_matches('-').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(lo: f64, hi: f64, target: usize) -> Vec<String> {
        let t = nice_ticks(lo, hi, target);
        t.iter().map(|&v| format_tick(v, tick_step(&t))).collect()
    }

    #[test]
    fn nice_ticks_cover_the_range_at_nice_steps() {
        assert_eq!(labels(0.0, 100.0, 6), ["0", "20", "40", "60", "80", "100"]);
        assert_eq!(labels(0.0, 73.2, 6), ["0", "20", "40", "60", "80"]);
        assert_eq!(
            labels(-12.0, 37.0, 6),
            ["-20", "-10", "0", "10", "20", "30", "40"]
        );
        assert_eq!(
            labels(0.12, 0.31, 5),
            ["0.10", "0.15", "0.20", "0.25", "0.30", "0.35"]
        );
        assert_eq!(labels(0.3, 0.1, 3), ["0.1", "0.2", "0.3"]);
        assert_eq!(
            labels(1.0, 1.0, 5),
            ["0.90", "0.95", "1.00", "1.05", "1.10"]
        );
        assert_eq!(labels(0.0, 0.0, 5), ["-1.0", "-0.5", "0.0", "0.5", "1.0"]);
        assert_eq!(
            labels(f64::NAN, 3.0, 6),
            ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
        );
        assert_eq!(labels(0.0, 3e9, 4), ["0e0", "1e9", "2e9", "3e9"]);
        for (lo, hi) in [
            (-0.5, 0.5),
            (3.3, 3.30001),
            (-1e300, 1e300),
            (1e-300, 2e-300),
        ] {
            let t = nice_ticks(lo, hi, 6);
            assert!(t.len() >= 2 && t.len() <= MAX_TICKS, "{lo} {hi}: {t:?}");
            assert!(t.windows(2).all(|w| w[0] < w[1]), "{lo} {hi}: {t:?}");
            assert!(t[0] <= lo && *t.last().unwrap() >= hi, "{lo} {hi}: {t:?}");
        }
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(20.0), 20.0);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(format_tick(-0.0001, 0.1), "0.0");
        assert_eq!(format_tick(2.5, 0.5), "2.5");
    }
}
