//! The judge's HTTP(S) client: `ureq` with rustls (ring; Mozilla's roots built in, or only the
//! PEM certificates of a CA file), responses capped in size, connect and whole-request timeouts,
//! and retries with exponential backoff and jitter on 429, 5xx and connection errors that honour
//! `Retry-After` within a total deadline.

use crate::bail;
use crate::error::{Context, Result};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};
use ureq::Agent;

/// The environment variable naming a PEM file of trusted CA certificates when no CA file is
/// given, as OpenSSL, curl and Python's ssl module read it.
pub const CA_FILE_ENV: &str = "SSL_CERT_FILE";

/// Settings of the client.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Resolving and connecting (TLS handshake included).
    pub connect_timeout: Duration,
    /// One whole request: connect, send, the response and its body.
    pub request_timeout: Duration,
    /// The largest response body read; a longer one is an error.
    pub max_response_bytes: u64,
    /// Retries stop when the next attempt would start later than this after the first.
    pub max_retry_time: Duration,
    /// The backoff before the second attempt; it doubles per attempt up to `max_backoff`, and
    /// each wait is drawn uniformly from [backoff / 2, backoff] (jitter).
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// A PEM file of CA certificates to trust instead of the built-in roots; None reads
    /// [`CA_FILE_ENV`] and falls back to the built-in (webpki-roots) ones.
    pub ca_file: Option<PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            connect_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(300),
            max_response_bytes: 16 << 20,
            max_retry_time: Duration::from_secs(300),
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            ca_file: None,
        }
    }
}

/// A response whose status is not retried (anything but 429 and 5xx).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// Attempts it took (1 when the first one answered).
    pub attempts: usize,
}

pub struct Client {
    agent: Agent,
    opts: ClientOptions,
}

/// Why one attempt failed.
enum Failure {
    /// Worth another attempt: a connection error, 429 or 5xx (with the server's Retry-After).
    Transient {
        what: String,
        retry_after: Option<Duration>,
    },
    /// Not: a malformed or oversized response, a TLS failure, a bad URL.
    Permanent(String),
}

impl Client {
    pub fn new(opts: ClientOptions) -> Result<Client> {
        let ca_file = opts.ca_file.clone().or_else(|| {
            std::env::var_os(CA_FILE_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        let roots = match &ca_file {
            Some(path) => RootCerts::new_with_certs(&read_pem_certificates(path)?),
            None => RootCerts::WebPki,
        };
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(roots)
            .build();
        let agent = Agent::config_builder()
            // Statuses come back as responses: 429 and 5xx are retried here, others reported.
            .http_status_as_error(false)
            // A redirect is reported, not followed with the API key to another place.
            .max_redirects(0)
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_global(Some(opts.request_timeout))
            .tls_config(tls)
            .build()
            .new_agent();
        Ok(Client { agent, opts })
    }

    /// POSTs `body` (JSON) to `url`, retrying 429, 5xx and connection errors, and returns the
    /// first response with another status. `headers` are never shown in messages.
    pub fn post_json(
        &self,
        url: &str,
        body: &[u8],
        headers: &[(&str, String)],
    ) -> Result<Response> {
        let start = Instant::now();
        let mut backoff = self.opts.first_backoff;
        for attempt in 1.. {
            let (what, retry_after) = match self.attempt(url, body, headers) {
                Ok((status, body)) => {
                    return Ok(Response {
                        status,
                        body,
                        attempts: attempt,
                    })
                }
                Err(Failure::Permanent(what)) => bail!("{url}: {what}"),
                Err(Failure::Transient { what, retry_after }) => (what, retry_after),
            };
            let jittered = backoff.mul_f64(0.5 + 0.5 * unit_random());
            // At least what the server asked for, and never shorter than the backoff.
            let wait = retry_after.map_or(jittered, |r| r.max(jittered));
            backoff = (backoff * 2).min(self.opts.max_backoff);
            let elapsed = start.elapsed();
            if elapsed + wait > self.opts.max_retry_time {
                let asked = match retry_after {
                    Some(r) if elapsed + r > self.opts.max_retry_time => {
                        format!(" (the server asked to wait {:.0}s more)", r.as_secs_f64())
                    }
                    _ => String::new(),
                };
                bail!(
                    "{url}: gave up after {attempt} attempt{} in {:.1}s, the retry deadline being \
                     {}s{asked}; last: {what}",
                    if attempt == 1 { "" } else { "s" },
                    elapsed.as_secs_f64(),
                    self.opts.max_retry_time.as_secs_f64()
                );
            }
            eprintln!(
                "{url}: attempt {attempt} failed ({}); retrying in {:.2}s",
                excerpt(&what, 200),
                wait.as_secs_f64()
            );
            std::thread::sleep(wait);
        }
        unreachable!("the retry loop returns or bails")
    }

    fn attempt(
        &self,
        url: &str,
        body: &[u8],
        headers: &[(&str, String)],
    ) -> std::result::Result<(u16, Vec<u8>), Failure> {
        let mut request = self
            .agent
            .post(url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json");
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let mut response = request.send(body).map_err(|e| self.classify(url, e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = response
            .body_mut()
            .with_config()
            .limit(self.opts.max_response_bytes)
            .read_to_vec()
            .map_err(|e| self.classify(url, e))?;
        if status == 429 || status >= 500 {
            let text = String::from_utf8_lossy(&body);
            return Err(Failure::Transient {
                what: format!("HTTP {status}: {}", excerpt(&text, 300)),
                retry_after,
            });
        }
        Ok((status, body))
    }

    fn classify(&self, url: &str, e: ureq::Error) -> Failure {
        use ureq::Error as E;
        match e {
            E::BodyExceedsLimit(cap) => Failure::Permanent(format!(
                "the response is larger than the {} cap",
                format_bytes(cap)
            )),
            // Rustls reports a refused certificate or handshake as invalid data.
            E::Io(io) if io.kind() == io::ErrorKind::InvalidData => {
                let hint = if url.starts_with("https:") {
                    " (for a private CA or a self-signed certificate, give --ca-cert FILE or set \
                     SSL_CERT_FILE)"
                } else {
                    ""
                };
                Failure::Permanent(format!("{io}{hint}"))
            }
            E::Io(_) | E::Timeout(_) | E::ConnectionFailed | E::HostNotFound => {
                Failure::Transient {
                    what: e.to_string(),
                    retry_after: None,
                }
            }
            E::Protocol(p) => Failure::Permanent(format!("malformed response: {p}")),
            other => Failure::Permanent(other.to_string()),
        }
    }
}

/// The certificates in a PEM file (private keys and other sections are skipped).
pub fn read_pem_certificates(path: &Path) -> Result<Vec<Certificate<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("{}: cannot read the CA certificate file", path.display()))?;
    let mut certificates = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item.with_context(|| format!("{}: bad PEM", path.display()))? {
            PemItem::Certificate(c) => certificates.push(c),
            _ => continue,
        }
    }
    if certificates.is_empty() {
        bail!(
            "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        );
    }
    Ok(certificates)
}

/// `Retry-After`: delay-seconds or an HTTP date (IMF-fixdate, RFC 850 or asctime); a date in
/// the past is no wait. None when unparsable.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long values saturate; the retry deadline turns them into an error.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An HTTP date in any of RFC 9110's three formats: "Sun, 06 Nov 1994 08:49:37 GMT",
/// "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994".
pub fn parse_http_date(text: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let mut month = None;
    let mut time = None;
    let mut numbers = Vec::new();
    for token in text
        .split([' ', ',', '-'])
        .filter(|t| !t.is_empty())
        .skip(1)
    {
        if token.contains(':') {
            let hms: Vec<u64> = token
                .split(':')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            let [h, m, s] = hms[..] else { return None };
            if h > 23 || m > 59 || s > 60 {
                return None;
            }
            time = Some(h * 3600 + m * 60 + s);
        } else if let Some(i) = MONTHS.iter().position(|m| token.eq_ignore_ascii_case(m)) {
            month = Some(i as u32 + 1);
        } else if token.bytes().all(|b| b.is_ascii_digit()) {
            numbers.push((token.len(), token.parse::<i64>().ok()?));
        } else if !token.eq_ignore_ascii_case("GMT") {
            return None;
        }
    }
    // The day comes before the year in all three formats.
    let [(_, day), (year_digits, year)] = numbers[..] else {
        return None;
    };
    let year = match year_digits {
        // RFC 850's two-digit years: RFC 9110 reads those more than 50 years ahead as past.
        2 if year < 70 => 2000 + year,
        2 => 1900 + year,
        4 => year,
        _ => return None,
    };
    let (month, time) = (month?, time?);
    if !(1..=31).contains(&day) || year < 1970 {
        return None;
    }
    let days = days_from_civil(year, month, day as u32);
    let seconds = u64::try_from(days).ok()? * 86_400 + time;
    Some(UNIX_EPOCH + Duration::from_secs(seconds))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A number in [0, 1) from the standard library's per-process random hash keys and the clock:
/// enough to spread retries of concurrent clients apart.
fn unit_random() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

fn format_bytes(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n}-byte")
    }
}

/// The first `max` characters of `text`, with "..." when cut.
pub fn excerpt(text: &str, max: usize) -> String {
    let mut chars = text.chars();
    let t: String = chars.by_ref().take(max).collect();
    if chars.next().is_some() {
        format!("{t}...")
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        for date in [
            "Sun, 06 Nov 1994 08:49:47 GMT",
            "Sunday, 06-Nov-94 08:49:47 GMT",
            "Sun Nov  6 08:49:47 1994",
        ] {
            assert_eq!(
                parse_retry_after(date, now),
                Some(Duration::from_secs(10)),
                "{date}"
            );
        }
        // A date in the past: no wait.
        assert_eq!(
            parse_retry_after("Sat, 05 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        // Leap years and the end of a year: 2024-02-29 and 2025-01-01.
        let at = |s: &str| {
            parse_http_date(s)
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
        };
        assert_eq!(at("Thu, 29 Feb 2024 00:00:00 GMT").as_secs(), 1_709_164_800);
        assert_eq!(at("Wed, 01 Jan 2025 00:00:00 GMT").as_secs(), 1_735_689_600);
        for bad in [
            "",
            "-5",
            "1.5",
            "soon",
            "Sun, 06 Nov 1994 25:00:00 GMT",
            "06 Nov",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn jitter_is_in_range() {
        for _ in 0..1000 {
            let x = unit_random();
            assert!((0.0..1.0).contains(&x), "{x}");
        }
    }

    #[test]
    fn excerpts() {
        assert_eq!(excerpt("héllo", 10), "héllo");
        assert_eq!(excerpt("héllo", 2), "hé...");
        assert_eq!(format_bytes(16 << 20), "16 MiB");
        assert_eq!(format_bytes(1000), "1000-byte");
    }
}
