//! clap value parsers for numeric flags: each accepts only finite numbers in its range, so
//! `--temperature NaN` or `--read-timeout -1` stop at parsing with clap's usage error, which
//! names the flag and the value (`invalid value 'NaN' for '--temperature <T>': ...`), instead
//! of reaching the code that would misuse them.

/// A finite f64 from a flag's text.
fn finite(s: &str) -> Result<f64, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !x.is_finite() {
        return Err(format!("{s} is not a finite number"));
    }
    Ok(x)
}

/// A finite number ≥ 0 (a temperature, a retry budget in seconds).
pub fn non_negative_f64(s: &str) -> Result<f64, String> {
    match finite(s)? {
        x if x >= 0.0 => Ok(x),
        x => Err(format!("must be 0 or more, not {x}")),
    }
}

/// A finite number > 0 (a timeout in seconds, a throughput).
pub fn positive_f64(s: &str) -> Result<f64, String> {
    match finite(s)? {
        x if x > 0.0 => Ok(x),
        x => Err(format!("must be more than 0, not {x}")),
    }
}

/// A finite f32 ≥ 0 (a sampling temperature), also finite once narrowed to f32.
pub fn non_negative_f32(s: &str) -> Result<f32, String> {
    let x = non_negative_f64(s)?;
    let narrowed = x as f32;
    if !narrowed.is_finite() {
        return Err(format!("{x} is too large"));
    }
    Ok(narrowed)
}

/// A count of at least 1 (tokens, examples, a batch).
pub fn positive_usize(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_and_out_of_range_values_are_refused() {
        for bad in ["NaN", "nan", "inf", "-inf", "1e400", "x", ""] {
            assert!(non_negative_f64(bad).is_err(), "{bad}");
            assert!(positive_f64(bad).is_err(), "{bad}");
        }
        assert_eq!(non_negative_f64("0"), Ok(0.0));
        assert!(non_negative_f64("-0.5").unwrap_err().contains("-0.5"));
        assert!(positive_f64("0").unwrap_err().contains("more than 0"));
        assert_eq!(positive_f64("2.5"), Ok(2.5));
        // Finite as an f64, infinite as an f32.
        assert!(non_negative_f32("1e39").is_err());
        assert_eq!(non_negative_f32("0.7"), Ok(0.7));
        assert!(positive_usize("0").is_err());
        assert!(positive_usize("-1").is_err());
        assert_eq!(positive_usize("3"), Ok(3));
    }
}
