//! The async runtime every service's `main` runs in, and how the kernel schedules its threads.
//!
//! On Linux the threads run as `SCHED_BATCH` unless told otherwise. A thread woken by a socket
//! (a request, a database answer) then does not preempt the process running on its core: it runs
//! when that process blocks, or at the next scheduler tick that ends its turn. Under load this
//! removes the preemptions in which a service, woken by a peer's write, interrupts that peer in
//! the middle of its work; each process does more per turn. The price is latency when a core is
//! busy: a woken thread may wait up to a tick for its turn (on an idle core it still runs at
//! once). Processes the service talks to (the database, the broker) keep their own policy.
//! The policy is set on the thread that builds the runtime, before it builds it, so every worker
//! and blocking thread inherits it.

use std::future::Future;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use crate::telemetry::{self, LogArgs};

/// How the kernel schedules the service's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CpuScheduling {
    /// `SCHED_BATCH`: a woken thread does not preempt the running process; it runs when that
    /// process blocks or at the tick that ends its turn.
    Batch,
    /// Keep the policy the process was started with (e.g. one set with `chrt`).
    Inherit,
}

/// Runtime settings, flattened into each service's settings.
#[derive(Debug, Clone, Copy, Parser)]
pub struct RuntimeArgs {
    /// Linux scheduling of every thread: `batch` (`SCHED_BATCH`: a woken thread waits for the
    /// running process instead of preempting it; fewer preemptions under load, up to a
    /// scheduler tick of extra wait on a busy core) or `inherit` (the policy the process was
    /// started with). Elsewhere than Linux both leave scheduling alone.
    #[arg(long, env = "CPU_SCHEDULING", value_enum, default_value_t = CpuScheduling::Batch)]
    pub cpu_scheduling: CpuScheduling,
}

impl Default for RuntimeArgs {
    fn default() -> Self {
        Self::parse_from(["runtime"])
    }
}

/// The body of every service's `main`: applies `runtime` to the calling thread, starts a
/// multi-threaded runtime whose threads all inherit that scheduling, installs logging (and
/// trace export) for `service`, and runs `main` to completion. A policy the kernel refuses is
/// logged as a warning; the service then runs with the policy it was started with.
pub fn run(
    runtime: RuntimeArgs,
    log: &LogArgs,
    service: &'static str,
    main: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let (threads, scheduled) = start(runtime.cpu_scheduling)?;
    threads.block_on(async {
        let _telemetry = telemetry::init(log, service);
        if let Err(err) = scheduled {
            tracing::warn!(error = %err, "threads keep the scheduling they were started with");
        }
        main.await
    })
}

/// Applies `scheduling` to the calling thread, then builds the runtime, whose threads inherit it;
/// with the outcome of applying it.
fn start(scheduling: CpuScheduling) -> anyhow::Result<(tokio::runtime::Runtime, std::io::Result<()>)> {
    let scheduled = apply(scheduling);
    let threads =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("failed to start the async runtime")?;
    Ok((threads, scheduled))
}

/// Sets the calling thread's policy (threads it creates afterwards inherit it).
fn apply(scheduling: CpuScheduling) -> std::io::Result<()> {
    match scheduling {
        CpuScheduling::Inherit => Ok(()),
        CpuScheduling::Batch => set_batch(),
    }
}

/// `sched_setscheduler(2)` to `SCHED_BATCH`. It keeps the nice value, so an unprivileged process
/// may do it (not one started as `SCHED_IDLE`, which this refuses to leave).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_batch() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread and `param` is a valid, initialised sched_param that
    // outlives the call; the call reads it and touches no other memory.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_batch() -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use clap::CommandFactory;

    use super::*;

    const SCHED_BATCH: u32 = 3;

    /// The calling thread's policy as the kernel reports it (field 41 of its stat line).
    fn policy() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields after the command name, which is in parentheses and may contain spaces: the
        // first of them is field 3.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(41 - 3).unwrap().parse().unwrap()
    }

    /// The policy seen by the future `main` would be, on a worker and on a blocking thread.
    fn policies_under(scheduling: CpuScheduling) -> [u32; 3] {
        // A thread of its own, so the test harness's threads keep their policy.
        std::thread::spawn(move || {
            let (threads, scheduled) = start(scheduling).unwrap();
            scheduled.unwrap();
            threads.block_on(async {
                [policy(), tokio::spawn(async { policy() }).await.unwrap(), tokio::task::spawn_blocking(policy).await.unwrap()]
            })
        })
        .join()
        .unwrap()
    }

    #[test]
    fn batch_reaches_every_thread_of_the_runtime() {
        assert_ne!(policy(), SCHED_BATCH, "the tests must start with another policy to see a change");
        assert_eq!(policies_under(CpuScheduling::Batch), [SCHED_BATCH; 3]);
    }

    #[test]
    fn inherit_leaves_the_policy_alone() {
        assert_eq!(policies_under(CpuScheduling::Inherit), [policy(); 3]);
    }

    #[test]
    fn the_default_is_batch() {
        // Read from the definition, not from this shell's environment.
        let command = RuntimeArgs::command();
        let arg = command.get_arguments().find(|a| a.get_id() == "cpu_scheduling").unwrap();
        assert_eq!(arg.get_default_values(), ["batch"]);
    }
}
