//! The async runtime every service's `main` runs in, and how the kernel schedules its threads.
//!
//! On Linux the threads run as `SCHED_BATCH` unless told otherwise: a thread woken by a socket
//! (a request, a database answer) does not preempt the process that is running, it waits for
//! that process to block or to use up its time slice. On a loaded machine a request then crosses
//! the gateway, the service and the database with fewer context switches, each process doing
//! more work per turn; on an idle core a woken thread still runs at once. The policy is set on
//! the thread that builds the runtime, before it builds it, so every worker and blocking thread
//! inherits it.
#![allow(unsafe_code)]

use std::future::Future;

use anyhow::Context;
use clap::{Args, ValueEnum};

/// How the kernel schedules the service's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CpuScheduling {
    /// `SCHED_BATCH`: a woken thread does not preempt the running process; it runs when that
    /// process blocks or its time slice ends.
    Batch,
    /// Keep the policy the process was started with (e.g. one set with `chrt`).
    Inherit,
}

/// Runtime settings, flattened into each service's settings.
#[derive(Debug, Clone, Copy, Args)]
pub struct RuntimeArgs {
    /// Linux scheduling of every thread: `batch` (`SCHED_BATCH`: a woken thread waits for the
    /// running process instead of preempting it, fewer context switches under load) or
    /// `inherit` (the policy the process was started with).
    #[arg(long, env = "CPU_SCHEDULING", value_enum, default_value_t = CpuScheduling::Batch)]
    pub cpu_scheduling: CpuScheduling,
}

impl RuntimeArgs {
    /// For settings built in code (tests, tools), which run in a runtime of their own.
    pub fn inherit() -> Self {
        Self { cpu_scheduling: CpuScheduling::Inherit }
    }
}

/// Applies `args` to the calling thread, then runs `main` to completion on a multi-threaded
/// runtime whose threads all inherit that scheduling. A policy the kernel refuses is reported on
/// stderr (logging starts later, inside `main`) and the service runs with the inherited one.
pub fn run(args: RuntimeArgs, main: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    if let Err(err) = apply(args.cpu_scheduling) {
        eprintln!("threads keep the scheduling they were started with: {err}");
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("failed to start the async runtime")?.block_on(main)
}

/// Sets the calling thread's policy (threads it creates afterwards inherit it).
fn apply(scheduling: CpuScheduling) -> std::io::Result<()> {
    match scheduling {
        CpuScheduling::Inherit => Ok(()),
        CpuScheduling::Batch => set_batch(),
    }
}

#[cfg(target_os = "linux")]
fn set_batch() -> std::io::Result<()> {
    // SCHED_BATCH takes no static priority; the nice value is kept, so no privilege is needed.
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
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "SCHED_BATCH exists on Linux only"))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    const SCHED_BATCH: u32 = 3;

    /// The calling thread's policy as the kernel reports it (field 41 of its stat line).
    fn policy() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(41 - 3).unwrap().parse().unwrap()
    }

    /// The policy seen on the thread that ran `main`, on a worker and on a blocking thread.
    fn policies_under(scheduling: CpuScheduling) -> [u32; 3] {
        // A thread of its own, so the test harness's threads keep their policy.
        std::thread::spawn(move || {
            let mut seen = [0; 3];
            run(RuntimeArgs { cpu_scheduling: scheduling }, async {
                seen[0] = policy();
                seen[1] = tokio::spawn(async { policy() }).await?;
                seen[2] = tokio::task::spawn_blocking(policy).await?;
                Ok(())
            })
            .unwrap();
            seen
        })
        .join()
        .unwrap()
    }

    #[test]
    fn batch_reaches_every_thread_of_the_runtime() {
        assert_eq!(policies_under(CpuScheduling::Batch), [SCHED_BATCH; 3]);
    }

    #[test]
    fn inherit_leaves_the_policy_alone() {
        assert_eq!(policies_under(CpuScheduling::Inherit), [policy(); 3]);
    }

    #[test]
    fn the_default_is_batch() {
        use clap::Parser;
        #[derive(Parser)]
        struct Settings {
            #[command(flatten)]
            runtime: RuntimeArgs,
        }
        assert_eq!(Settings::parse_from(["service"]).runtime.cpu_scheduling, CpuScheduling::Batch);
    }
}
