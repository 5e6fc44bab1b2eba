//! The gateway's HTTP server on several threads, each with its own single-threaded runtime and
//! its own router (whose backend connection pool is its own). One acceptor hands the accepted
//! connections to the threads in turn; a connection, every request on it and the backend
//! connections those requests use then stay on one thread. A request is never handed to another
//! thread on its way through, which would cost a wake-up and a context switch each time; the
//! hand-over happens once per connection.

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context;
use axum::{serve::Listener, Router};
use futures::{stream::FuturesUnordered, StreamExt};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::forwarded::{Peer, TrustedProxies};

/// Serves on `listener`, one thread per router, until `shutdown` resolves; then each thread
/// shuts down gracefully (no new connections; requests in flight finish), and this resolves
/// once every thread has ended. A request's head must arrive within `header_read_timeout`
/// ([`common::server`]); each connection's [`Peer`] is judged against `trusted`. A thread that
/// fails or ends stops the others; the first error is returned after all have ended. Dropping
/// this future stops the threads too.
pub async fn serve(
    listener: TcpListener,
    routers: Vec<Router>,
    header_read_timeout: Duration,
    trusted: TrustedProxies,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let local = listener.local_addr().context("listener")?;
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    let mut threads = Vec::with_capacity(routers.len());
    let mut ended = FuturesUnordered::new();
    let mut failed = None;
    for (n, router) in routers.into_iter().enumerate() {
        let (hand, handed) = mpsc::unbounded_channel();
        let handed = Handed { handed, local };
        let thread = format!("http-{}-{n}", local.port());
        match start(thread, handed, router, header_read_timeout, trusted.clone(), stop.clone().cancelled_owned()) {
            Ok(thread) => {
                threads.push(hand);
                ended.push(thread);
            }
            Err(err) => {
                failed = Some(err);
                stop.cancel();
                break;
            }
        }
    }
    let shutdown = async {
        shutdown.await;
        stop.cancel();
    };
    tokio::pin!(shutdown);
    let mut listener = Some(listener);
    let mut next = 0;
    while !ended.is_empty() {
        tokio::select! {
            () = &mut shutdown, if !stop.is_cancelled() => {}
            accepted = accept(listener.as_ref()) => match accepted {
                Ok((conn, addr)) => next = hand_over(&threads, next, conn, addr),
                Err(err) if is_connection_error(&err) => {}
                Err(err) => {
                    // E.g. out of file descriptors: wait for some to be closed (as axum does).
                    tracing::error!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            result = ended.next() => {
                stop.cancel();
                if let Some(Err(err)) = result {
                    failed.get_or_insert(err);
                }
            }
        }
        if stop.is_cancelled() {
            // New connections are refused from now on.
            listener = None;
        }
    }
    failed.map_or(Ok(()), Err)
}

async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

fn is_connection_error(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(err.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// Gives `conn` to thread `next` (or the next one still serving); the thread after it.
fn hand_over(
    threads: &[mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>],
    next: usize,
    conn: TcpStream,
    addr: SocketAddr,
) -> usize {
    let Ok(mut conn) = conn.into_std() else { return next };
    for i in 0..threads.len() {
        let n = (next + i) % threads.len();
        match threads[n].send((conn, addr)) {
            Ok(()) => return n + 1,
            Err(mpsc::error::SendError((back, _))) => conn = back,
        }
    }
    next
}

/// The connections handed to one thread, as axum's server takes them.
pub struct Handed {
    handed: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    local: SocketAddr,
}

impl Listener for Handed {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.handed.recv().await {
                // Registered with this thread's runtime.
                Some((conn, addr)) => match TcpStream::from_std(conn) {
                    Ok(conn) => return (conn, addr),
                    Err(err) => tracing::warn!(error = %err, "accepted connection dropped"),
                },
                // The acceptor is gone: nothing more comes; the stop follows.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Starts thread `name` serving `router` on `listener` until `shutdown` resolves; resolves
/// when that thread's server has stopped.
fn start(
    name: String,
    listener: Handed,
    router: Router,
    header_read_timeout: Duration,
    trusted: TrustedProxies,
    shutdown: WaitForCancellationFutureOwned,
) -> anyhow::Result<impl Future<Output = anyhow::Result<()>>> {
    let (done, stopped) = oneshot::channel();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let served =
                tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(anyhow::Error::from).and_then(
                    |runtime| {
                        let peer = |addr| Peer::new(addr, &trusted);
                        runtime.block_on(common::server::serve_with(listener, router, header_read_timeout, peer, shutdown));
                        anyhow::Ok(())
                    },
                );
            // The receiver is gone only if the gateway stopped for another reason.
            let _ = done.send(served);
        })
        .context("failed to start a server thread")?;
    Ok(async move {
        stopped.await.unwrap_or_else(|_| Err(anyhow::anyhow!("server thread ended abnormally"))).context("HTTP server failed")
    })
}
