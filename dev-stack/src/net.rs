//! Loopback ports.

use std::collections::{hash_map::RandomState, BTreeSet};
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

/// Where [`free_port`] looks: above every port the dev stack uses by default, below Kubernetes'
/// NodePort range and the kernel's usual ephemeral range.
const TEST_PORTS: std::ops::Range<u16> = 20_000..30_000;

/// A port that was free on 127.0.0.1 a moment ago and that this process has not handed out
/// before.
///
/// It is picked at random outside the kernel's ephemeral range: a port the OS picks for
/// `bind(0)` comes from that range, where any outgoing connection on the machine (or another
/// process asking the OS for a port) can take it again between this check and the caller's own
/// bind, which made a broker fail to start beside a busy test run.
pub fn free_port() -> std::io::Result<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral = avoided_range();
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let span = u64::from(TEST_PORTS.end - TEST_PORTS.start);
    for _ in 0..500 {
        let offset = RandomState::new().hash_one(std::time::Instant::now()) % span;
        let port = TEST_PORTS.start + u16::try_from(offset).unwrap_or(0);
        if ephemeral.as_ref().is_some_and(|e| e.contains(&port)) || handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    // Every candidate taken or inside the ephemeral range: let the OS pick.
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
}

/// The ephemeral range, unless it covers every candidate (a host whose range is `1024 65535`):
/// then nothing is avoided, and a random candidate is no worse than the OS's pick.
fn avoided_range() -> Option<std::ops::RangeInclusive<u16>> {
    let ephemeral = ephemeral_range();
    let covers_all = ephemeral.contains(&TEST_PORTS.start) && ephemeral.contains(&(TEST_PORTS.end - 1));
    (!covers_all).then_some(ephemeral)
}

/// The kernel's ephemeral port range (Linux default when it cannot be read).
fn ephemeral_range() -> std::ops::RangeInclusive<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some(bounds.next()??..=bounds.next()??)
        })
        .unwrap_or(32_768..=60_999)
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_in_use(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, limit: Duration) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if port_in_use(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    anyhow::bail!("nothing listens on port {port} after {limit:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_outside_the_ephemeral_range() {
        let ephemeral = avoided_range();
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        assert!(ports.iter().all(|p| !ephemeral.as_ref().is_some_and(|e| e.contains(p))), "{ports:?} meets {ephemeral:?}");
    }
}
