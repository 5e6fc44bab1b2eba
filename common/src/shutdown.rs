//! The process-wide stop signal: SIGTERM (what orchestrators send) or Ctrl-C; how an HTTP
//! server drains its keep-alive connections before it stops; and how it tells a client not to
//! reuse a connection it is about to close.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes, HttpBody},
    extract::Request,
    http::{header, HeaderValue, StatusCode},
    response::Response,
    Router,
};
use http_body::{Frame, SizeHint};
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};

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

/// How long an HTTP server keeps serving after the stop signal while it asks its clients to
/// leave (see [`Drain`]).
#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    /// Milliseconds an HTTP server keeps answering after SIGTERM, each answer with
    /// `Connection: close`, before it stops taking requests: keep-alive clients (a proxy, a load
    /// balancer pinned to this replica) move to another replica between two requests instead of
    /// sending one on a connection just closed. 0: stop at once (in-flight requests still finish).
    #[arg(long, env = "SHUTDOWN_DRAIN_MS", default_value_t = 0)]
    pub shutdown_drain_ms: u64,
}

/// The stop of an HTTP server in two steps. After the stop signal, for the drain period, it
/// keeps serving but every response says `Connection: close`, so each busy keep-alive
/// connection is closed by its client right after its next answer; then the graceful shutdown
/// (hyper's: no new requests, in-flight ones finish, idle connections closed).
#[derive(Debug, Clone)]
pub struct Drain {
    closing: Arc<AtomicBool>,
    period: Duration,
}

impl Drain {
    pub fn new(args: &DrainArgs) -> Self {
        Self { closing: Arc::default(), period: Duration::from_millis(args.shutdown_drain_ms) }
    }

    /// `router` with its responses marked `Connection: close` while draining, and whenever the
    /// request's body was not read to its end: the server closes such a connection rather than
    /// read the rest (hyper drains only what has already arrived), so a client that kept it for
    /// its next request (the gateway's pool, a load balancer) would send that request into the
    /// close and lose it. Typical case: a 413 for a body over the limit, or a 401 before the body.
    pub fn layer(&self, router: Router) -> Router {
        router.layer(CloseLayer { draining: self.closing.clone() })
    }

    /// For `with_graceful_shutdown`: resolves once `stop` is cancelled and the drain period has
    /// passed.
    pub async fn then_stop(self, stop: CancellationToken) {
        stop.cancelled().await;
        if !self.period.is_zero() {
            self.closing.store(true, Ordering::Relaxed);
            tracing::info!(drain_ms = self.period.as_millis() as u64, "draining: asking clients to close their connections");
            tokio::time::sleep(self.period).await;
        }
    }
}

#[derive(Clone)]
struct CloseLayer {
    draining: Arc<AtomicBool>,
}

impl<S> Layer<S> for CloseLayer {
    type Service = Closing<S>;

    fn layer(&self, inner: S) -> Closing<S> {
        Closing { inner, draining: self.draining.clone() }
    }
}

/// Marks the answers whose connection is about to close (see [`Drain::layer`]).
#[derive(Clone)]
struct Closing<S> {
    inner: S,
    draining: Arc<AtomicBool>,
}

impl<S> Service<Request> for Closing<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Marked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // A request without a body (most of them) is passed on untouched.
        let (req, read) = if req.body().is_end_stream() {
            (req, None)
        } else {
            let read = Arc::new(AtomicBool::new(false));
            let req = req.map(|inner| Body::new(Watched { inner, read: read.clone() }));
            (req, Some(read))
        };
        Marked { inner: self.inner.call(req), read, draining: self.draining.clone() }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer, with `Connection: close` added when it is due.
    struct Marked<F> {
        #[pin]
        inner: F,
        read: Option<Arc<AtomicBool>>,
        draining: Arc<AtomicBool>,
    }
}

impl<F, E> Future for Marked<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        let unread = this.read.as_ref().is_some_and(|read| !read.load(Ordering::Acquire));
        let draining = this.draining.load(Ordering::Relaxed);
        // A protocol switch keeps its own `Connection: upgrade`.
        if (unread || draining) && response.status() != StatusCode::SWITCHING_PROTOCOLS {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response))
    }
}

/// A request body that records when it has been read to its end.
struct Watched {
    inner: Body,
    read: Arc<AtomicBool>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // Readers of a body of known length stop at its last frame without asking for the end.
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::routing::{get, post};
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

    /// A POST of `body` to `path` on a kept-alive connection; the response head, lower-cased.
    async fn send(conn: &mut TcpStream, path: &str, body: &[u8]) -> String {
        let head = format!("POST {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n\r\n", body.len());
        conn.write_all(&[head.as_bytes(), body].concat()).await.unwrap();
        let mut buf = vec![0; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).to_lowercase()
    }

    #[tokio::test]
    async fn an_answer_given_before_the_body_was_read_tells_the_client_to_close() {
        let drain = Drain::new(&DrainArgs { shutdown_drain_ms: 0 });
        let api = Router::new()
            .route("/refuse", post(|| async { StatusCode::UNAUTHORIZED }))
            .route("/read", post(|body: String| async move { body.len().to_string() }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, drain.layer(api)).await });

        let mut conn = TcpStream::connect(addr).await.unwrap();
        let refused = send(&mut conn, "/refuse", &[b'x'; 2048]).await;
        assert!(refused.starts_with("http/1.1 401") && refused.contains("connection: close"), "{refused}");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(0))), "closed after the answer: {closed:?}");

        // A body read to its end keeps the connection for the next request.
        let mut conn = TcpStream::connect(addr).await.unwrap();
        for _ in 0..2 {
            let read = send(&mut conn, "/read", b"hello").await;
            assert!(read.starts_with("http/1.1 200") && !read.contains("connection: close"), "{read}");
        }
        // So does a request without a body.
        let answered = send(&mut conn, "/refuse", b"").await;
        assert!(answered.starts_with("http/1.1 401") && !answered.contains("connection: close"), "{answered}");
    }

    #[tokio::test]
    async fn a_stopping_server_keeps_answering_kept_alive_connections_and_asks_them_to_close() {
        let drain = Drain::new(&DrainArgs { shutdown_drain_ms: 400 });
        let router = drain.layer(Router::new().route("/", get(|| async { "ok" })));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let serving = axum::serve(listener, router).with_graceful_shutdown(drain.then_stop(stop.clone()));
        let server = tokio::spawn(async move { serving.await });

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
        let drain = Drain::new(&DrainArgs { shutdown_drain_ms: 0 });
        let router = drain.layer(Router::new().route("/", get(|| async { "ok" })));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stop = CancellationToken::new();
        let serving = axum::serve(listener, router).with_graceful_shutdown(drain.then_stop(stop.clone()));
        let server = tokio::spawn(async move { serving.await });
        let stopped_at = Instant::now();
        stop.cancel();
        server.await.unwrap().unwrap();
        assert!(stopped_at.elapsed() < Duration::from_millis(300));
    }
}
