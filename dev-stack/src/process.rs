//! Running infrastructure binaries: as a service user when we are root, tied to our lifetime
//! when asked.

// Process control and exit hooks go through libc.
#![allow(unsafe_code)]

use std::{
    ffi::CString,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// uid and gid of a system user, if it exists.
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    let cname = CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer to static storage or null; we copy the ids out at once.
    unsafe {
        let pw = libc::getpwnam(cname.as_ptr());
        if pw.is_null() {
            None
        } else {
            Some(((*pw).pw_uid, (*pw).pw_gid))
        }
    }
}

/// Makes `cmd` run as `ids` (when given).
pub fn run_as(cmd: &mut Command, ids: Option<(u32, u32)>) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// `chown -R` a directory to `ids` (when given).
pub fn chown_tree(dir: &Path, ids: Option<(u32, u32)>) -> anyhow::Result<()> {
    if let Some((uid, gid)) = ids {
        let status =
            Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(dir).status().context("failed to run chown")?;
        if !status.success() {
            bail!("chown of {} failed", dir.display());
        }
    }
    Ok(())
}

/// Runs a command to completion; on failure the error carries its output.
pub fn run_checked(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("failed to start {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Spawns a child that receives `signal` when this process dies (even by SIGKILL), so test
/// infrastructure never outlives the test binary.
///
/// The kernel ties the parent-death signal to the spawning *thread*, so the child is spawned
/// from a dedicated thread that lives as long as the child (test threads come and go).
pub fn spawn_tied_to_this_process(cmd: Command, signal: libc::c_int) -> anyhow::Result<u32> {
    spawn_tied(cmd, signal, false)
}

/// The same, in a session of its own, as a detached process runs (see [`spawn_detached`]):
/// the kernel then schedules it as a group of its own (autogroup) against this process and
/// its other children, and a terminal's Ctrl-C reaches it only through this process' death.
pub fn spawn_tied_in_own_session(cmd: Command, signal: libc::c_int) -> anyhow::Result<u32> {
    spawn_tied(cmd, signal, true)
}

fn spawn_tied(mut cmd: Command, signal: libc::c_int, own_session: bool) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let (tx, rx) = mpsc::channel::<std::io::Result<u32>>();
    std::thread::Builder::new()
        .name("dev-stack-child".into())
        .spawn(move || {
            // SAFETY: setsid and prctl are async-signal-safe; this runs between fork and exec.
            // (A new session keeps the parent-death signal.)
            unsafe {
                cmd.pre_exec(move || {
                    if own_session {
                        libc::setsid();
                    }
                    if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            match cmd.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Ok(child.id()));
                    let _ = wait(&mut child);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .context("failed to start the supervising thread")?;
    rx.recv().context("supervising thread died")?.context("failed to spawn child process")
}

fn wait(child: &mut Child) -> std::io::Result<()> {
    child.wait().map(|_| ())
}

/// True while a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(pid as libc::pid_t, 0) == 0 };
    exists
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
}

/// SIGTERM, then SIGKILL once `grace` has passed; returns when the process is gone.
pub fn terminate(pid: u32, grace: Duration) {
    // SAFETY: plain kill(2) on a pid we started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let start = Instant::now();
    while pid_alive(pid) && start.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(100));
    }
    if pid_alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        while pid_alive(pid) && start.elapsed() < grace + Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// SIGKILL (a crash: no clean-up of any kind); returns when the process is gone.
pub fn kill(pid: u32) {
    // SAFETY: plain kill(2) on a pid we started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let start = Instant::now();
    while pid_alive(pid) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Spawns a child in its own session, so it outlives this command and ignores our terminal's
/// Ctrl-C; returns its pid.
pub fn spawn_detached(mut cmd: Command) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe; this runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    Ok(cmd.spawn().context("failed to start process")?.id())
}

/// A fresh `<tmp>/<prefix><pid>-<n>` path for one test instance, after removing the dirs that
/// earlier, now dead, test processes left with the same prefix.
pub fn fresh_test_dir(prefix: &str) -> std::path::PathBuf {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let tmp = std::env::temp_dir();
    remove_stale_dirs(&tmp, prefix);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = tmp.join(format!("{prefix}{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Removes `<dir>/<prefix><pid>-…` entries whose process is gone (test leftovers).
fn remove_stale_dirs(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else { continue };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !pid_alive(p)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Polls `ready` until it holds; fails early when `alive` says the process died, and after
/// `limit`. Failures carry the tail of the process' log.
pub fn wait_ready(
    what: &str,
    limit: Duration,
    log: &Path,
    alive: impl Fn() -> bool,
    ready: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ready() {
            return Ok(());
        }
        if !alive() {
            bail!("{what} exited during start-up; log:\n{}", crate::services::tail(log, 40));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("{what} not ready after {limit:?}; log:\n{}", crate::services::tail(log, 40))
}
