//! `cargo xtask bench`: measures the platform in ONE run on this machine, alternating A and B
//! several times and printing medians and A/B ratios. Nothing here asserts a speed: it prints,
//! people compare (bench/RESULTS.md keeps a run).
//!
//! 1. gateway → patient-service vs direct: `GET /patients/{id}`, `GET /patients?size=50`;
//! 2. gateway → a static backend vs that backend direct (the proxy + auth tax alone);
//! 3. µs per token verification (criterion, run by `cargo xtask bench` before this binary);
//! 4. `POST /patients` with every side effect, and how long analytics needs to catch up;
//! 5. outbox relay throughput from a pre-filled outbox;
//! 6. RSS of each service, idle and peak.

mod relay;
mod stack;
mod static_backend;
mod wrk;

use std::{fmt::Write as _, path::PathBuf, time::Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::Value;
use stack::{rss_mib, Stack};

#[derive(Parser)]
#[command(name = "bench", about = "Benchmark of the patient platform (release builds, real infrastructure)")]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// A/B rounds per comparison (medians are taken over them).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds per load run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Concurrent connections for the read comparisons.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Concurrent connections for the create load.
    #[arg(long, default_value_t = 16)]
    create_connections: u32,
    /// Rows in the pre-filled outbox of the relay measurement.
    #[arg(long, default_value_t = 100_000)]
    outbox_rows: i64,
    /// Also write the results to bench/RESULTS.md.
    #[arg(long)]
    record: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// (internal) serve the static backend on a port.
    StaticBackend { port: u16 },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match args.command {
        Some(Cmd::StaticBackend { port }) => rt.block_on(static_backend::serve(port)),
        None => rt.block_on(run(&args)),
    }
}

/// One A/B comparison: A and B of each round (run back to back).
struct Pair {
    name: String,
    a: Vec<wrk::Report>,
    b: Vec<wrk::Report>,
}

/// The median (of an even count, the mean of the middle two); 0 for none.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The smallest and the largest value ((0, 0) for none).
fn range(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.is_empty() {
        (0.0, 0.0)
    } else {
        (min, max)
    }
}

impl Pair {
    fn rate(r: &[wrk::Report]) -> f64 {
        median(r.iter().map(|x| x.requests_per_sec).collect())
    }
    fn failures(&self) -> u64 {
        self.a.iter().chain(&self.b).map(|r| r.failures).sum()
    }
    /// A/B of each round: the two sides of a round ran back to back, so a drift of the machine
    /// over the run moves both alike.
    fn round_ratios(&self) -> Vec<f64> {
        self.a.iter().zip(&self.b).map(|(a, b)| a.requests_per_sec / b.requests_per_sec.max(1.0)).collect()
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    wrk::ensure()?;
    let mut stack = Stack::start().await?;
    let result = measure(args, &mut stack).await;
    drop(stack);
    let report = result?;
    println!("\n{report}");
    if args.record {
        let path = dev_stack::paths::workspace_root().join("bench/RESULTS.md");
        std::fs::write(&path, &report).with_context(|| format!("failed to write {}", path.display()))?;
        println!("(written to {})", path.display());
    }
    Ok(())
}

async fn measure(args: &Args, stack: &mut Stack) -> anyhow::Result<String> {
    let ports = stack.ports;
    let http = reqwest::Client::new();
    // A few patients to read (created through the API, so billing and the outbox are real).
    let mut ids = Vec::new();
    let token = stack.token().await?;
    for n in 0..60 {
        let body = serde_json::json!({"name": format!("Read Patient {n}"), "email": format!("read-{n}@example.com"),
            "address": "2 Read Road", "dateOfBirth": "1975-05-05", "registeredDate": "2024-02-02"});
        let resp = http.post(stack.url(ports.patient, "/patients")).bearer_auth(&token).json(&body).send().await?;
        let created: Value = resp.error_for_status()?.json().await?;
        ids.push(created["id"].as_str().context("created id")?.to_owned());
    }
    let idle: Vec<(String, f64)> = stack.pids.iter().map(|(n, p)| (n.clone(), rss_mib(*p).0)).collect();

    let static_port = dev_stack::net::free_port()?;
    let _backend = static_backend::spawn(static_port)?;
    let static_gateway = stack.launch_gateway_for("gateway-static", &stack.url(static_port, ""))?;

    let one = format!("/patients/{}", ids[0]);
    let comparisons = [
        ("GET /patients/{id}: gateway / direct", (ports.gateway, format!("/api{one}")), (ports.patient, one.clone())),
        (
            "GET /patients?size=50: gateway / direct",
            (ports.gateway, "/api/patients?size=50".to_owned()),
            (ports.patient, "/patients?size=50".to_owned()),
        ),
        ("static backend: gateway / direct", (static_gateway, format!("/api{one}")), (static_port, one.clone())),
    ];
    let mut pairs: Vec<Pair> = Vec::new();
    for (name, a, b) in &comparisons {
        let mut pair = Pair { name: (*name).to_owned(), a: vec![], b: vec![] };
        for round in 0..args.rounds {
            let token = stack.token().await?;
            println!("==> {name}, round {}/{}", round + 1, args.rounds);
            let run =
                |(port, path): &(u16, String)| wrk::run(&stack.url(*port, path), &token, args.connections, args.seconds, None);
            // ABBA: neither side always runs first.
            if round % 2 == 0 {
                pair.a.push(run(a)?);
                pair.b.push(run(b)?);
            } else {
                pair.b.push(run(b)?);
                pair.a.push(run(a)?);
            }
            let (a, b) = (pair.a[round].requests_per_sec, pair.b[round].requests_per_sec);
            println!("    A {a:.0} req/s, B {b:.0} req/s, A/B {:.3}", a / b.max(1.0));
        }
        pairs.push(pair);
    }

    println!("==> POST /patients with every side effect");
    let script = std::env::temp_dir().join(format!("bench-create-{}.lua", std::process::id()));
    std::fs::write(&script, wrk::CREATE_SCRIPT)?;
    // One round first that is not counted: the broker's JVM compiles its produce and fetch
    // paths, PostgreSQL's caches fill, and the tables grow past the size where their plans
    // change (then analyzed, as autovacuum would); the measured rounds then see the platform as
    // it runs for days, and start once analytics has caught up.
    // Three times a measured round: in a shorter one, the broker's compiler threads still took
    // an eighth of the machine during the measured rounds.
    println!("==> creates, warm-up round (not counted)");
    let token = stack.token().await?;
    let warm_up = args.seconds * 3;
    wrk::run(&stack.url(ports.patient, "/patients"), &token, args.create_connections, warm_up, Some(&script))?;
    analytics_lag(stack, &http, &token, Instant::now()).await?;
    stack.analyze().await?;
    let mut creates = Vec::new();
    let mut lags = Vec::new();
    for round in 0..args.rounds {
        let token = stack.token().await?;
        println!("==> creates, round {}/{}", round + 1, args.rounds);
        let report =
            wrk::run(&stack.url(ports.patient, "/patients"), &token, args.create_connections, args.seconds, Some(&script))?;
        let done = Instant::now();
        lags.push(analytics_lag(stack, &http, &token, done).await?);
        println!("    {:.0} creates/s, analytics caught up {:.2} s after the last 201", report.requests_per_sec, lags[round]);
        creates.push(report);
    }
    let _ = std::fs::remove_file(&script);
    let peak: Vec<(String, f64)> = stack.pids.iter().map(|(n, p)| (n.clone(), rss_mib(*p).1)).collect();

    println!("==> outbox relay: {} pre-filled events", args.outbox_rows);
    let relay = relay::measure(stack, args.outbox_rows).await?;

    Ok(render(args, &pairs, &creates, &lags, &relay, &idle, &peak))
}

/// Seconds from `since` until analytics has counted as many creations as patient-service holds.
async fn analytics_lag(stack: &Stack, http: &reqwest::Client, token: &str, since: Instant) -> anyhow::Result<f64> {
    let db = sqlx::PgPool::connect(&stack.pg.url("patient_service")).await?;
    let expected: i64 = sqlx::query_scalar("SELECT count(*) FROM patients").fetch_one(&db).await?;
    db.close().await;
    let url = stack.url(stack.ports.analytics, "/analytics/summary");
    loop {
        let summary: Value = http.get(&url).bearer_auth(token).send().await?.json().await?;
        if summary["patientsCreated"].as_i64().unwrap_or_default() >= expected {
            return Ok(since.elapsed().as_secs_f64());
        }
        anyhow::ensure!(since.elapsed().as_secs() < 120, "analytics did not catch up within 120 s");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem_gib:.1} GiB memory")
}

/// Criterion's mean estimate of `verify/<case>` in µs, from its report in the target dir.
fn criterion_us(case: &str) -> Option<f64> {
    let file: PathBuf = dev_stack::paths::target_dir().join("criterion/verify").join(case).join("new/estimates.json");
    let estimates: Value = serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()?;
    Some(estimates["mean"]["point_estimate"].as_f64()? / 1000.0)
}

fn render(
    args: &Args,
    pairs: &[Pair],
    creates: &[wrk::Report],
    lags: &[f64],
    relay: &relay::RelayResult,
    idle: &[(String, f64)],
    peak: &[(String, f64)],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmark results\n");
    let _ =
        writeln!(out, "Recorded by `cargo xtask bench` on {} — machine: {}.", chrono::Utc::now().format("%Y-%m-%d"), machine());
    let _ = writeln!(
        out,
        "Release builds; wrk with 2 threads on the same machine; {} rounds of {} s per side, A and B alternated; medians \
         (the range is the lowest and the highest round).\n",
        args.rounds, args.seconds
    );
    let _ = writeln!(out, "## Gateway cost (req/s, {} connections, a valid ms-api token)\n", args.connections);
    let _ = writeln!(
        out,
        "| comparison | A: via gateway | B: direct | A/B of the medians | A/B per round: median (range) | failed requests |\n\
         |---|---|---|---|---|---|"
    );
    for p in pairs {
        let (a, b) = (Pair::rate(&p.a), Pair::rate(&p.b));
        let ratios = p.round_ratios();
        let (low, high) = range(&ratios);
        let _ = writeln!(
            out,
            "| {} | {a:.0} | {b:.0} | {:.3} | {:.3} ({low:.3}–{high:.3}) | {} |",
            p.name,
            a / b.max(1.0),
            median(ratios.clone()),
            p.failures()
        );
    }
    let _ = writeln!(out, "\n## Token verification (criterion, µs per token)\n");
    let _ = writeln!(out, "| cold key (JWK parsed + RS256) | warm key (RS256, key held) | cached token |\n|---|---|---|");
    let us = |c: &str| criterion_us(c).map_or("n/a".to_owned(), |v| format!("{v:.2}"));
    let _ = writeln!(out, "| {} | {} | {} |", us("cold_key"), us("warm_key"), us("cached_token"));
    let _ = writeln!(out, "\n## POST /patients, every side effect ({} connections, direct)\n", args.create_connections);
    let _ = writeln!(
        out,
        "| creates/s | range of the rounds | p50 ms | p99 ms | failed | analytics caught up after the last 201 (s) | \
         range of the rounds (s) |\n|---|---|---|---|---|---|---|"
    );
    let rates: Vec<f64> = creates.iter().map(|r| r.requests_per_sec).collect();
    let ((low, high), (lag_low, lag_high)) = (range(&rates), range(lags));
    let _ = writeln!(
        out,
        "| {:.0} | {low:.0}–{high:.0} | {:.1} | {:.1} | {} | {:.2} | {lag_low:.2}–{lag_high:.2} |",
        median(rates.clone()),
        median(creates.iter().map(|r| r.p50_ms).collect()),
        median(creates.iter().map(|r| r.p99_ms).collect()),
        creates.iter().map(|r| r.failures).sum::<u64>(),
        median(lags.to_vec()),
    );
    let _ = writeln!(out, "\n## Outbox relay\n");
    let _ = writeln!(out, "| events | events/s (first to last publish) | wall time incl. start (s) |\n|---|---|---|");
    let _ = writeln!(out, "| {} | {:.0} | {:.1} |", relay.events, relay.events_per_sec, relay.wall_secs);
    let _ = writeln!(out, "\n## Memory (RSS, MiB)\n");
    let _ = writeln!(out, "| service | idle | peak under load |\n|---|---|---|");
    for (name, p) in peak {
        let i = idle.iter().find(|(n, _)| n == name).map_or("—".to_owned(), |(_, i)| format!("{i:.1}"));
        let _ = writeln!(out, "| {name} | {i} | {p:.1} |");
    }
    let _ = writeln!(
        out,
        "\n`gateway-static` is the second gateway, in front of the static backend (started after the idle reading)."
    );
    out
}

#[cfg(test)]
mod tests {
    use super::{median, range};

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn the_range_is_the_lowest_and_the_highest_value() {
        assert_eq!(range(&[0.9, 0.82, 0.87]), (0.82, 0.9));
        assert_eq!(range(&[]), (0.0, 0.0));
    }
}
