//! The process-wide stop signal: SIGTERM (what orchestrators send) or Ctrl-C; and how an HTTP
//! server ends its connections: one too slow to send a request, and all of them when it stops,
//! draining its keep-alive connections first.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::Router;
use tokio_util::sync::CancellationToken;

/// Resolves when the process is asked to stop.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received Ctrl-C, shutting down"),
        () = term => tracing::info!("received SIGTERM, shutting down"),
    }
}

/// How an HTTP server ends its connections (see [`Drain`]).
#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    /// Milliseconds an HTTP server keeps answering after SIGTERM, each answer with
    /// `Connection: close`, before it stops taking requests: keep-alive clients (a proxy, a load
    /// balancer pinned to this replica) move to another replica between two requests instead of
    /// sending one on a connection just closed. 0: stop at once (in-flight requests still finish).
    #[arg(long, env = "SHUTDOWN_DRAIN_MS", default_value_t = 0)]
    pub shutdown_drain_ms: u64,
    /// Milliseconds a client has to send a request's head (line and headers), counted from
    /// when the server starts waiting for it; a kept-alive connection idle that long is closed
    /// too. Slower clients are disconnected, so a client sending a byte at a time cannot hold
    /// connections open. HTTP/1.1; at least 1.
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_header_read_timeout_ms: u64,
}

/// The stop of an HTTP server in two steps. After the stop signal, for the drain period, it
/// keeps serving but every response says `Connection: close`, so each busy keep-alive
/// connection is closed by its client right after its next answer; then the graceful shutdown
/// (hyper's: no new requests, in-flight ones finish, idle connections closed).
#[derive(Debug, Clone)]
pub struct Drain {
    closing: Arc<AtomicBool>,
    period: Duration,
    header_read_timeout: Duration,
}

impl Drain {
    pub fn new(args: &DrainArgs) -> Self {
        Self {
            closing: Arc::default(),
            period: Duration::from_millis(args.shutdown_drain_ms),
            header_read_timeout: Duration::from_millis(args.http_header_read_timeout_ms),
        }
    }

    /// How long a client has to send a request's head ([`DrainArgs::http_header_read_timeout_ms`]).
    pub fn header_read_timeout(&self) -> Duration {
        self.header_read_timeout
    }

    /// Serves `router` on `listener` ([`crate::server::serve`]) until `stop` is cancelled and the
    /// drain period has passed; then stops gracefully. Never fails: the result is for the
    /// service's task list.
    pub async fn serve<L>(self, listener: L, router: Router, stop: CancellationToken) -> anyhow::Result<()>
    where
        L: axum::serve::Listener,
        L::Addr: Clone + Send + Sync + 'static,
    {
        let header_read_timeout = self.header_read_timeout;
        crate::server::serve::<L, L::Addr>(listener, router, header_read_timeout, self.then_stop(stop)).await;
        Ok(())
    }

    /// `router` with its responses marked `Connection: close` while draining, and when an
    /// answer's connection is about to close for another reason ([`crate::keepalive`]).
    pub fn layer(&self, router: Router) -> Router {
        crate::keepalive::layer(router, self.closing.clone())
    }

    /// The server's stop: resolves once `stop` is cancelled and the drain period has passed.
    pub async fn then_stop(self, stop: CancellationToken) {
        stop.cancelled().await;
        if !self.period.is_zero() {
            self.closing.store(true, Ordering::Relaxed);
            tracing::info!(drain_ms = self.period.as_millis() as u64, "draining: asking clients to close their connections");
            tokio::time::sleep(self.period).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::routing::get;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    /// One request on a kept-alive connection; the response head, lower-cased.
    async fn ask(conn: &mut TcpStream) -> String {
        conn.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n").await.unwrap();
        let mut buf = vec![0; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).to_lowercase()
    }

    #[tokio::test]
    async fn a_stopping_server_keeps_answering_kept_alive_connections_and_asks_them_to_close() {
        let drain = Drain::new(&DrainArgs { shutdown_drain_ms: 400, http_header_read_timeout_ms: 30_000 });
        let router = drain.layer(Router::new().route("/", get(|| async { "ok" })));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(drain.serve(listener, router, stop.clone()));

        let mut conn = TcpStream::connect(addr).await.unwrap();
        let first = ask(&mut conn).await;
        assert!(first.starts_with("http/1.1 200") && !first.contains("connection: close"), "{first}");
        let stopped_at = Instant::now();
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The connection opened before the stop is still served, and told to close.
        let second = ask(&mut conn).await;
        assert!(second.starts_with("http/1.1 200") && second.contains("connection: close"), "{second}");
        // And the server closes it after that answer.
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(0))), "closed after the answer: {closed:?}");
        // So is a new one, during the drain.
        let mut late = TcpStream::connect(addr).await.unwrap();
        assert!(ask(&mut late).await.contains("connection: close"));
        drop((conn, late));
        server.await.unwrap().unwrap();
        assert!(stopped_at.elapsed() >= Duration::from_millis(400), "the server stops after the drain period");
    }

    #[tokio::test]
    async fn without_a_drain_period_the_server_stops_at_once() {
        let drain = Drain::new(&DrainArgs { shutdown_drain_ms: 0, http_header_read_timeout_ms: 30_000 });
        let router = drain.layer(Router::new().route("/", get(|| async { "ok" })));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(drain.serve(listener, router, stop.clone()));
        let stopped_at = Instant::now();
        stop.cancel();
        server.await.unwrap().unwrap();
        assert!(stopped_at.elapsed() < Duration::from_millis(300));
    }
}
