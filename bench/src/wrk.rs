//! The load generator: wrk from Debian's packages (installed on first use), and its report.

use std::{path::Path, process::Command};

use anyhow::{bail, Context};

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Report {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Responses outside 2xx/3xx, and socket errors.
    pub failures: u64,
}

/// Makes sure `wrk` is on the PATH.
pub fn ensure() -> anyhow::Result<()> {
    if Command::new("wrk").arg("--version").output().is_ok() {
        return Ok(());
    }
    println!("==> installing wrk (Debian)");
    dev_stack::postgres::apt_install(&["wrk"])
}

/// One load run: `connections` over two threads for `seconds`, optionally scripted.
pub fn run(url: &str, token: &str, connections: u32, seconds: u32, script: Option<&Path>) -> anyhow::Result<Report> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency"]);
    cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    let out = cmd.arg(url).output().context("failed to run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    parse(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

fn parse(text: &str) -> anyhow::Result<Report> {
    let mut report = Report::default();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => report.requests_per_sec = v.parse()?,
            ["50%", v] => report.p50_ms = millis(v)?,
            ["99%", v] => report.p99_ms = millis(v)?,
            [n, "requests", "in", ..] => report.requests = n.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => report.failures += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                report.failures += rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()).sum::<u64>()
            }
            _ => {}
        }
    }
    if report.requests_per_sec == 0.0 {
        bail!("no Requests/sec line");
    }
    Ok(report)
}

/// wrk's latency figures: `812.00us`, `1.23ms`, `2.01s`.
fn millis(v: &str) -> anyhow::Result<f64> {
    let (number, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("unknown latency unit in {v}")
    };
    Ok(number.parse::<f64>()? * factor)
}

/// A wrk script posting patients with unique emails (per run, thread and request).
pub const CREATE_SCRIPT: &str = r#"
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n = 0
local run = tostring(os.time()) .. tostring(math.random(1000000))
local headers = nil
function request()
  if headers == nil then
    -- wrk.format replaces wrk.headers (the -H Authorization) when given a table: carry them over.
    headers = {}
    for k, v in pairs(wrk.headers) do headers[k] = v end
    headers["Content-Type"] = "application/json"
  end
  n = n + 1
  local body = string.format('{"name":"Bench Patient","email":"bench-%s-%d-%d@example.com","address":"1 Bench Road","dateOfBirth":"1980-01-01","registeredDate":"2024-01-01"}', run, tid, n)
  return wrk.format("POST", "/patients", headers, body)
end
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rate_latency_and_failures() {
        let text = "Running 5s test @ http://127.0.0.1:1/x\n  2 threads and 32 connections\n  Latency Distribution\n     50%  812.00us\n     75%    1.10ms\n     90%    1.50ms\n     99%    3.20ms\n  80000 requests in 5.00s, 20.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  16000.50\nTransfer/sec:      4.00MB\n";
        let r = parse(text).unwrap();
        assert_eq!((r.requests, r.failures), (80000, 7));
        assert!((r.requests_per_sec - 16000.5).abs() < 1e-9 && (r.p50_ms - 0.812).abs() < 1e-9 && (r.p99_ms - 3.2).abs() < 1e-9);
    }
}
