//! The runner of `cargo xtask test`: the workspace's test binaries built once
//! (`cargo test --no-run`), then run in streams side by side — the pass on the local launchers
//! and the integration suite's pass on Docker — each stream one binary at a time, as `cargo test`
//! would. The two passes spend most of their time waiting on their infrastructure (a JVM
//! starting, a broker electing, a container becoming healthy), so on two cores they fit together
//! in little more than the longer one's time. A binary's output is printed whole when it ends,
//! so the streams' lines never interleave.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    time::Instant,
};

use anyhow::Context;
use serde_json::Value;

/// A test binary cargo built.
#[derive(Debug, Clone)]
pub struct TestBinary {
    pub package: String,
    /// Its target's kind: `lib`, `bin`, `test`, …
    pub kind: String,
    /// Its source, relative to the workspace (`gateway/tests/edge.rs`).
    pub source: String,
    pub executable: PathBuf,
    /// The package's directory: tests run there, as under `cargo test`.
    pub manifest_dir: PathBuf,
}

/// `cargo test`'s options that take the next argument as their value.
const VALUED: [&str; 20] = [
    "-p",
    "--package",
    "--exclude",
    "--test",
    "--bin",
    "--example",
    "--bench",
    "-F",
    "--features",
    "-j",
    "--jobs",
    "--target",
    "--target-dir",
    "--manifest-path",
    "--profile",
    "--color",
    "--message-format",
    "--config",
    "-Z",
    "--lockfile-path",
];

/// Options that select targets, with which `cargo test --doc` refuses to run.
const TARGET_SELECTORS: [&str; 11] = [
    "--lib",
    "--bins",
    "--bin",
    "--tests",
    "--test",
    "--examples",
    "--example",
    "--benches",
    "--bench",
    "--all-targets",
    "--doc",
];

/// Arguments as `cargo test` reads them: the options for cargo (which tests to build; the whole
/// workspace unless packages are named), and the arguments for every test binary — a test name
/// given before `--`, and everything after it.
pub fn split_args(args: &[String]) -> (Vec<String>, Vec<String>) {
    let (before, after) = match args.iter().position(|a| a == "--") {
        Some(at) => (&args[..at], &args[at + 1..]),
        None => (args, &[][..]),
    };
    let (mut cargo, mut binary) = (Vec::new(), Vec::new());
    let mut value_next = false;
    for arg in before {
        if value_next || arg.starts_with('-') {
            value_next = !value_next && VALUED.contains(&arg.as_str());
            cargo.push(arg.clone());
        } else {
            binary.push(arg.clone());
        }
    }
    let packages = cargo.iter().any(|a| a.starts_with("-p") || a.starts_with("--package") || a == "--workspace" || a == "--all");
    if !packages {
        cargo.insert(0, "--workspace".into());
    }
    binary.extend(after.iter().cloned());
    (cargo, binary)
}

/// Whether `cargo test --doc` can run on this selection: no target named, and some library
/// among the binaries built.
pub fn has_doc_tests(cargo_args: &[String], binaries: &[TestBinary]) -> bool {
    let selects = cargo_args.iter().any(|a| TARGET_SELECTORS.contains(&a.split('=').next().unwrap_or(a)));
    !selects && binaries.iter().any(|b| b.kind.contains("lib") || b.kind == "proc-macro")
}

/// Builds the test binaries of `cargo test <cargo_args> --no-run` and lists them in cargo's order.
pub fn build(cargo_args: &[String]) -> anyhow::Result<Vec<TestBinary>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = crate::paths::workspace_root();
    // Compiler messages are rendered on stderr as usual; stdout carries the artifacts.
    let mut child = Command::new(cargo)
        .arg("test")
        .args(cargo_args)
        .args(["--no-run", "--message-format=json-render-diagnostics"])
        .current_dir(&root)
        .stdout(Stdio::piped())
        .spawn()
        .context("failed to run cargo test --no-run")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut binaries = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        match serde_json::from_str::<Value>(&line) {
            Ok(message) => binaries.extend(test_binary(&message, &root)),
            Err(_) => println!("{line}"),
        }
    }
    anyhow::ensure!(child.wait()?.success(), "building the tests failed");
    Ok(binaries)
}

/// Runs the doc tests of the same selection (`cargo test --doc`) with `args`, their output
/// echoed, and adds them to `totals`.
pub fn doc_tests(cargo_args: &[String], args: &[String], totals: &mut Totals) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .arg("test")
        .args(cargo_args)
        .args(["--doc", "--no-fail-fast", "--"])
        .args(args)
        .current_dir(crate::paths::workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("failed to run cargo test --doc")?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    let (passed, failed) = count(&text);
    totals.passed += passed;
    totals.failed += failed;
    if !out.status.success() {
        totals.failed += u64::from(failed == 0);
        totals.failures.push("[local] doc tests".into());
    }
    Ok(())
}

/// The test binary a cargo JSON message announces, if it announces one.
fn test_binary(message: &Value, root: &Path) -> Option<TestBinary> {
    if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
        return None;
    }
    let executable = PathBuf::from(message["executable"].as_str()?);
    let manifest_dir = Path::new(message["manifest_path"].as_str()?).parent()?.to_path_buf();
    let source = Path::new(message["target"]["src_path"].as_str()?);
    Some(TestBinary {
        package: package_name(message["package_id"].as_str()?)?,
        kind: message["target"]["kind"][0].as_str().unwrap_or_default().to_owned(),
        source: source.strip_prefix(root).unwrap_or(source).display().to_string(),
        executable,
        manifest_dir,
    })
}

/// The package name in a cargo package id: `path+file:///w/gateway#0.1.0` (the directory's
/// name), `path+file:///w/dir#name@0.1.0`, or the older `name 0.1.0 (path+file:///w/name)`.
fn package_name(id: &str) -> Option<String> {
    match id.split_once('#') {
        Some((source, fragment)) => match fragment.split_once('@') {
            Some((name, _version)) => Some(name.to_owned()),
            None => source.trim_end_matches('/').rsplit('/').next().map(str::to_owned),
        },
        None => id.split_whitespace().next().map(str::to_owned),
    }
}

/// Binaries run one after another under one environment.
pub struct Stream {
    /// Shown before each binary's output: `local`, `docker`.
    pub name: &'static str,
    pub env: Vec<(String, String)>,
    pub binaries: Vec<TestBinary>,
}

/// What the runs add up to.
#[derive(Debug, Default)]
pub struct Totals {
    pub passed: u64,
    pub failed: u64,
    /// The binaries that failed, `[stream] source`.
    pub failures: Vec<String>,
}

/// Runs the streams side by side, passing `args` (a test name filter, `--nocapture`, …) to every
/// binary; logs go to `logs`, one file per binary, printed as each binary ends. The binaries in
/// `apart` (labels as printed, `[local] integration-test/tests/faults.rs`) never run at the same
/// time as one another.
pub fn run(streams: &[Stream], args: &[String], logs: &Path, apart: &[&str], totals: Totals) -> anyhow::Result<Totals> {
    let _ = fs::remove_dir_all(logs);
    fs::create_dir_all(logs)?;
    let totals = Mutex::new(totals);
    let alone = Mutex::new(());
    std::thread::scope(|scope| {
        for stream in streams {
            let (totals, alone) = (&totals, &alone);
            scope.spawn(move || {
                for binary in &stream.binaries {
                    let label = format!("[{}] {}", stream.name, binary.source);
                    let _apart = apart.contains(&label.as_str()).then(|| alone.lock().unwrap_or_else(|p| p.into_inner()));
                    println!("==> started {label}");
                    let (output, success, took) = match run_one(stream, binary, args, logs) {
                        Ok(run) => run,
                        Err(e) => (format!("{e:#}\n"), false, 0),
                    };
                    let (passed, failed) = count(&output);
                    let mut totals = totals.lock().unwrap_or_else(|p| p.into_inner());
                    totals.passed += passed;
                    // A binary that failed without a failed test (it crashed, or could not start)
                    // counts as one failure.
                    totals.failed += if success { failed } else { failed.max(1) };
                    if !success {
                        totals.failures.push(label.clone());
                    }
                    // Printed under the lock: one binary's output at a time.
                    let verdict = if success { "ok" } else { "FAILED" };
                    println!("==> {label}: {verdict} after {took} s\n{output}");
                }
            });
        }
    });
    Ok(totals.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// Runs one binary with its output in a log file; the output, whether it passed, seconds taken.
fn run_one(stream: &Stream, binary: &TestBinary, args: &[String], logs: &Path) -> anyhow::Result<(String, bool, u64)> {
    let name = format!("{}-{}.log", stream.name, binary.source.replace(['/', '.'], "_"));
    let path = logs.join(name);
    let log = fs::File::create(&path).with_context(|| format!("failed to create {}", path.display()))?;
    let started = Instant::now();
    let status = Command::new(&binary.executable)
        .args(args)
        .current_dir(&binary.manifest_dir)
        .env("CARGO_MANIFEST_DIR", &binary.manifest_dir)
        .env("CARGO_PKG_NAME", &binary.package)
        .envs(stream.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("failed to run {}", binary.executable.display()))?;
    let output = String::from_utf8_lossy(&fs::read(&path)?).into_owned();
    Ok((output, status.success(), started.elapsed().as_secs()))
}

/// Passed and failed tests in a binary's output (its `test result: …` lines).
fn count(output: &str) -> (u64, u64) {
    output.lines().filter_map(|l| l.strip_prefix("test result: ")).fold((0, 0), |(passed, failed), summary| {
        (passed + count_before(summary, "passed"), failed + count_before(summary, "failed"))
    })
}

/// The number just before `label` in a summary such as `ok. 5 passed; 0 failed; …`.
fn count_before(summary: &str, label: &str) -> u64 {
    let words: Vec<&str> = summary.split_whitespace().collect();
    words.windows(2).find(|w| w[1].trim_end_matches(';') == label).and_then(|w| w[0].parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn package_names_come_from_every_form_of_package_id() {
        assert_eq!(package_name("path+file:///work/main/gateway#0.1.0").as_deref(), Some("gateway"));
        assert_eq!(package_name("path+file:///work/main/crates/x#integration-test@0.1.0").as_deref(), Some("integration-test"));
        assert_eq!(package_name("common 0.1.0 (path+file:///work/main/common)").as_deref(), Some("common"));
    }

    #[test]
    fn only_test_artifacts_with_an_executable_are_test_binaries() {
        let root = Path::new("/w");
        let artifact = |test: bool, executable: Value| {
            json!({
                "reason": "compiler-artifact",
                "package_id": "path+file:///w/gateway#0.1.0",
                "manifest_path": "/w/gateway/Cargo.toml",
                "target": { "kind": ["test"], "name": "edge", "src_path": "/w/gateway/tests/edge.rs" },
                "profile": { "test": test },
                "executable": executable,
            })
        };
        let binary = test_binary(&artifact(true, json!("/t/debug/deps/edge-1")), root).unwrap();
        assert_eq!(binary.package, "gateway");
        assert_eq!(binary.source, "gateway/tests/edge.rs");
        assert_eq!(binary.manifest_dir, Path::new("/w/gateway"));
        assert_eq!(binary.executable, Path::new("/t/debug/deps/edge-1"));
        assert!(test_binary(&artifact(false, json!("/t/debug/gateway")), root).is_none(), "a library or binary build");
        assert!(test_binary(&artifact(true, Value::Null), root).is_none(), "no executable");
        assert!(test_binary(&json!({ "reason": "build-finished", "success": true }), root).is_none());
    }

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn arguments_are_split_as_cargo_test_splits_them() {
        let split = |args: &[&str]| split_args(&strings(args));
        assert_eq!(split(&[]), (strings(&["--workspace"]), vec![]));
        assert_eq!(split(&["--", "--nocapture"]), (strings(&["--workspace"]), strings(&["--nocapture"])));
        assert_eq!(split(&["--", "edge"]), (strings(&["--workspace"]), strings(&["edge"])));
        assert_eq!(split(&["edge"]), (strings(&["--workspace"]), strings(&["edge"])), "a test name before --");
        assert_eq!(
            split(&["-p", "gateway", "--test", "edge", "cors", "--", "--nocapture"]),
            (strings(&["-p", "gateway", "--test", "edge"]), strings(&["cors", "--nocapture"]))
        );
        assert_eq!(split(&["-pgateway", "x"]), (strings(&["-pgateway"]), strings(&["x"])));
        assert_eq!(split(&["--package=gateway"]).0, strings(&["--package=gateway"]));
        assert_eq!(split(&["--features", "kafka", "x"]).0, strings(&["--workspace", "--features", "kafka"]));
    }

    #[test]
    fn doc_tests_run_unless_targets_are_named_or_no_library_is_built() {
        let binary = |kind: &str| TestBinary {
            package: "p".into(),
            kind: kind.into(),
            source: String::new(),
            executable: PathBuf::new(),
            manifest_dir: PathBuf::new(),
        };
        let libs = [binary("lib"), binary("test")];
        assert!(has_doc_tests(&strings(&["--workspace"]), &libs));
        assert!(!has_doc_tests(&strings(&["--workspace", "--test", "edge"]), &libs));
        assert!(!has_doc_tests(&strings(&["--bin=xtask"]), &libs));
        assert!(!has_doc_tests(&strings(&["-p", "bench"]), &[binary("bin")]));
    }

    #[test]
    fn results_are_added_up_over_every_summary_line() {
        let output = "running 3 tests\ntest a ... ok\ntest result: ok. 3 passed; 0 failed; 0 ignored; 0 measured\n\
                      test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured\n";
        assert_eq!(count(output), (4, 2));
        assert_eq!(count("thread panicked before any test\n"), (0, 0));
    }
}
