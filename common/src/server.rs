//! Serving a router over HTTP/1.1 as `axum::serve` does, plus the time limit a server on a
//! network needs: a request's head must arrive within a bound. `axum::serve` gives hyper no
//! timer, which turns hyper's own limit off, so a client that sends its head a byte at a time,
//! or opens a connection and sends nothing, holds that connection and its task for ever. Here
//! the clock starts when the server begins waiting for a head (on a new connection at once, on
//! a kept-alive one after the previous answer), and a head not complete within the bound closes
//! the connection. An idle kept-alive connection is closed after the same time. HTTP/2 without
//! TLS (h2c) is not served: no client of the platform speaks it, and the gRPC services have
//! their own server.
//!
//! Every request carries its connection's peer as [`ConnectInfo<P>`], made once per connection
//! from the peer's address (`P` = the address itself, or what a service derives from it), as with
//! `into_make_service_with_connect_info`.

use std::{future::Future, time::Duration};

use axum::{
    extract::{ConnectInfo, Request},
    serve::Listener,
    Router,
};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::sync::watch;
use tower::ServiceExt;

/// Serves `router` on `listener` until `shutdown` resolves; then takes no new connection, lets
/// each connection finish its request in flight, and resolves once every connection has closed.
pub async fn serve<L, P>(listener: L, router: Router, header_read_timeout: Duration, shutdown: impl Future<Output = ()>)
where
    L: Listener,
    P: From<L::Addr> + Clone + Send + Sync + 'static,
{
    serve_with(listener, router, header_read_timeout, P::from, shutdown).await;
}

/// [`serve`], with each connection's [`ConnectInfo<P>`] made by `peer` from the peer's address
/// (for a `P` that needs more than the address, e.g. the gateway's trusted proxies).
pub async fn serve_with<L, P>(
    mut listener: L,
    router: Router,
    header_read_timeout: Duration,
    peer: impl Fn(L::Addr) -> P,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener,
    P: Clone + Send + Sync + 'static,
{
    // HTTP/1.1 only (the services' gRPC runs on its own server): the head's clock then starts
    // as soon as the connection is served, before its first byte.
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    // Dropped when the stop comes: every connection then shuts down gracefully.
    let (stopping, stop_seen) = watch::channel(());
    // A receiver per connection: the server has ended when all are gone.
    let (all_closed, open) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let peer = peer(addr);
        let service = router.clone().map_request(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer.clone()));
            req
        });
        let builder = builder.clone();
        let (mut stop_seen, open) = (stop_seen.clone(), open.clone());
        tokio::spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service)).with_upgrades();
            tokio::pin!(conn);
            let mut stopping = false;
            loop {
                tokio::select! {
                    served = conn.as_mut() => {
                        if let Err(err) = served {
                            tracing::trace!(error = %err, "connection ended with an error");
                        }
                        break;
                    }
                    _ = stop_seen.changed(), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(open);
        });
    }
    drop(listener);
    drop((stopping, stop_seen, open));
    all_closed.closed().await;
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, sync::Arc, time::Instant};

    use axum::routing::get;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    async fn start(header_read_timeout: Duration) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let router = Router::new()
            .route("/", get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { format!("from {}", peer.ip()) }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(serve::<_, SocketAddr>(listener, router, header_read_timeout, async move {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    /// Reads until the server closes the connection; what it sent, and when it closed.
    async fn until_closed(conn: &mut TcpStream) -> (String, Instant) {
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "the server never closed the connection");
        (String::from_utf8_lossy(&got).into_owned(), Instant::now())
    }

    #[tokio::test]
    async fn a_request_head_sent_too_slowly_closes_the_connection() {
        let (addr, _stop) = start(Duration::from_millis(500)).await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        // A byte of the head every 100 ms: each read makes progress, the head never completes.
        for byte in b"GET / HTTP/1.1\r\nhost: test\r\nx-slow: aaaaaaaaaaaaaa" {
            if conn.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (answer, closed) = until_closed(&mut conn).await;
        assert!(!answer.contains("200"), "no request was served: {answer}");
        let after = closed - started;
        assert!(after >= Duration::from_millis(450) && after < Duration::from_secs(5), "closed after {after:?}");
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed() {
        let (addr, _stop) = start(Duration::from_millis(500)).await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let (answer, closed) = until_closed(&mut conn).await;
        assert!(!answer.contains("200"), "{answer}");
        assert!(closed - started >= Duration::from_millis(450), "closed after {:?}", closed - started);
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_same_time_and_a_prompt_one_is_served() {
        let (addr, _stop) = start(Duration::from_millis(500)).await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n").await.unwrap();
        let served_at = Instant::now();
        // The answer carries the peer's address; then the kept-alive connection idles.
        let (answer, closed) = until_closed(&mut conn).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("from 127.0.0.1"), "{answer}");
        assert!(closed - served_at >= Duration::from_millis(450), "idle for {:?}", closed - served_at);
    }

    #[tokio::test]
    async fn a_stop_lets_the_request_in_flight_finish_then_refuses_new_connections() {
        let started = Arc::new(tokio::sync::Notify::new());
        let router = Router::new().route(
            "/",
            get({
                let started = started.clone();
                || async move {
                    started.notify_one();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "done"
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve::<_, SocketAddr>(listener, router, Duration::from_secs(30), async move {
            let _ = stopped.await;
        }));
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n").await.unwrap();
        started.notified().await;
        stop.send(()).unwrap();

        let (answer, _) = until_closed(&mut conn).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"), "{answer}");
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("the server ends").unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "no new connection is taken");
    }
}
