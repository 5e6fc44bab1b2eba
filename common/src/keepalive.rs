//! When an HTTP server's answer says `Connection: close`, so a keep-alive client (the gateway's
//! pool, a load balancer) never sends its next request on a connection the server is closing.
//!
//! Two cases: the server is draining before it stops ([`crate::shutdown::Drain`]), or the answer
//! was given before the request's body was read to its end (a 413 for a body over the limit, a
//! 401 or 429 decided before the body). In the second case hyper would close the connection
//! after the answer unless the rest of the body had already arrived — without saying so, so the
//! client could keep the connection and lose its next request in the close. So the rest of a
//! small body is read and discarded before answering, as nginx does (bounded in size and time;
//! the connection then stays open), and an answer whose body could not be read to its end says
//! `Connection: close`.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    task::{ready, Context, Poll},
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
use tokio::time::Sleep;
use tower::{Layer, Service};

/// The most of an unread body discarded to keep its connection open.
const DISCARD_LIMIT: u64 = 64 * 1024;
/// How long the rest of an unread body may take to arrive before the answer goes out with
/// `Connection: close` instead.
const DISCARD_WAIT: Duration = Duration::from_millis(500);

/// `router` with its answers marked `Connection: close` while `draining` is set, and when the
/// request's body could not be read to its end (see the module's description).
pub fn layer(router: Router, draining: Arc<AtomicBool>) -> Router {
    router.layer(CloseLayer { draining })
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
        let (req, body) = if req.body().is_end_stream() {
            (req, None)
        } else {
            let tracker = Arc::new(Tracker::default());
            let req = req.map(|inner| Body::new(Watched { inner, tracker: tracker.clone() }));
            (req, Some(tracker))
        };
        Marked { inner: self.inner.call(req), body, draining: self.draining.clone(), discard: None }
    }
}

/// What became of a request's body.
#[derive(Default)]
struct Tracker {
    /// Read to its end.
    read: AtomicBool,
    /// The unread rest, left here when the handler dropped the body.
    rest: Mutex<Option<Body>>,
}

/// A request body that records when it has been read to its end, and leaves its unread rest
/// behind when dropped.
struct Watched {
    inner: Body,
    tracker: Arc<Tracker>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // Readers of a body of known length stop at its last frame without asking for the end.
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.tracker.read.store(true, Ordering::Release);
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

impl Drop for Watched {
    fn drop(&mut self) {
        if !self.tracker.read.load(Ordering::Acquire) {
            let rest = std::mem::replace(&mut self.inner, Body::empty());
            *self.tracker.rest.lock().unwrap_or_else(PoisonError::into_inner) = Some(rest);
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's answer; with `Connection: close` added when it is due, after the rest
    /// of a small unread body is discarded.
    struct Marked<F> {
        #[pin]
        inner: F,
        body: Option<Arc<Tracker>>,
        draining: Arc<AtomicBool>,
        discard: Option<Discard>,
    }
}

impl<F, E> Future for Marked<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Some(discard) = this.discard.as_mut() {
                let emptied = ready!(discard.poll_rest(cx));
                let response = this.discard.take().expect("discarding").response;
                return Poll::Ready(Ok(mark(response, !emptied || this.draining.load(Ordering::Relaxed))));
            }
            let response = ready!(this.inner.as_mut().poll(cx))?;
            let unread = this.body.as_ref().is_some_and(|t| !t.read.load(Ordering::Acquire));
            if unread {
                let rest = this.body.as_ref().and_then(|t| t.rest.lock().unwrap_or_else(PoisonError::into_inner).take());
                // Only a rest of known, small length; one still held elsewhere (a proxied body
                // the backend stopped reading) or of unknown length is not waited for.
                if let Some(rest) = rest.filter(|r| r.size_hint().upper().is_some_and(|n| n <= DISCARD_LIMIT)) {
                    *this.discard = Some(Discard { response, rest, deadline: Box::pin(tokio::time::sleep(DISCARD_WAIT)) });
                    continue;
                }
            }
            return Poll::Ready(Ok(mark(response, unread || this.draining.load(Ordering::Relaxed))));
        }
    }
}

/// The answer waiting while the rest of its request's body is read and thrown away.
struct Discard {
    response: Response,
    rest: Body,
    deadline: Pin<Box<Sleep>>,
}

impl Discard {
    /// Whether the rest was read to its end (false: an error, more than announced, or too slow).
    fn poll_rest(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        loop {
            if self.rest.is_end_stream() {
                return Poll::Ready(true);
            }
            match Pin::new(&mut self.rest).poll_frame(cx) {
                Poll::Ready(None) => return Poll::Ready(true),
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(_))) => return Poll::Ready(false),
                Poll::Pending => {
                    ready!(self.deadline.as_mut().poll(cx));
                    return Poll::Ready(false);
                }
            }
        }
    }
}

fn mark(mut response: Response, close: bool) -> Response {
    // A protocol switch keeps its own `Connection: upgrade`.
    if close && response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::routing::post;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use std::net::SocketAddr;

    use super::*;

    /// The servers' limit for a request's head, well above these tests' pace.
    const SLOW_HEAD: Duration = Duration::from_secs(30);

    /// A server whose `/refuse` answers 401 without reading the body, `/read` reads it whole and
    /// `/frames` reads it frame by frame until it reports its end and keeps it a while (as a
    /// proxy's client does).
    async fn server() -> SocketAddr {
        let api = Router::new()
            .route("/refuse", post(|| async { StatusCode::UNAUTHORIZED }))
            .route("/read", post(|body: String| async move { body.len().to_string() }))
            .route(
                "/frames",
                post(|mut body: Body| async move {
                    let mut read = 0;
                    while !body.is_end_stream() {
                        match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                            _ => break,
                        }
                    }
                    // Still held when the answer goes out, as by a proxy's client.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        drop(body);
                    });
                    read.to_string()
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(crate::server::serve::<_, SocketAddr>(
            listener,
            layer(api, Arc::default()),
            SLOW_HEAD,
            std::future::pending(),
        ));
        addr
    }

    /// Writes `head` and `body` on `conn`; the answer's head, lower-cased.
    async fn exchange(conn: &mut TcpStream, head: String, body: &[u8]) -> String {
        conn.write_all(&[head.as_bytes(), body].concat()).await.unwrap();
        let mut buf = vec![0; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).to_lowercase()
    }

    async fn send(conn: &mut TcpStream, path: &str, body: &[u8]) -> String {
        exchange(conn, format!("POST {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n\r\n", body.len()), body).await
    }

    async fn closed(conn: &mut TcpStream) -> bool {
        let mut rest = Vec::new();
        matches!(tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut rest)).await, Ok(Ok(0)))
    }

    #[tokio::test]
    async fn a_small_unread_body_is_discarded_and_the_connection_kept() {
        let addr = server().await;
        let mut conn = TcpStream::connect(addr).await.unwrap();
        // 48 KiB: the rest of a 64 KiB body a 16 KiB limit refused, more than hyper drains itself.
        for _ in 0..3 {
            let refused = send(&mut conn, "/refuse", &[b'x'; 48 * 1024]).await;
            assert!(refused.starts_with("http/1.1 401") && !refused.contains("connection: close"), "{refused}");
        }
        for path in ["/read", "/frames"] {
            let read = send(&mut conn, path, b"hello").await;
            assert!(read.starts_with("http/1.1 200") && !read.contains("connection: close"), "{path}: {read}");
        }
    }

    #[tokio::test]
    async fn an_answer_given_before_a_large_or_unending_body_tells_the_client_to_close() {
        let addr = server().await;
        // Larger than what is discarded.
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let big = send(&mut conn, "/refuse", &vec![b'x'; 2 * DISCARD_LIMIT as usize]).await;
        assert!(big.starts_with("http/1.1 401") && big.contains("connection: close"), "{big}");
        assert!(closed(&mut conn).await, "the server closes it after the answer");

        // Announced but never sent: answered once the wait is over.
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let head = "POST /refuse HTTP/1.1\r\nhost: test\r\ncontent-length: 1000\r\n\r\n".to_owned();
        let slow = exchange(&mut conn, head, b"only part").await;
        assert!(slow.starts_with("http/1.1 401") && slow.contains("connection: close"), "{slow}");
        assert!(closed(&mut conn).await);

        // Chunked: its length is unknown, so it is not waited for.
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let head = "POST /refuse HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n".to_owned();
        let chunked = exchange(&mut conn, head, b"5\r\nhello\r\n").await;
        assert!(chunked.starts_with("http/1.1 401") && chunked.contains("connection: close"), "{chunked}");
    }

    #[tokio::test]
    async fn a_draining_server_asks_every_client_to_close() {
        let api = Router::new().route("/read", post(|body: String| async move { body.len().to_string() }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let drained = layer(api, Arc::new(AtomicBool::new(true)));
        tokio::spawn(crate::server::serve::<_, SocketAddr>(listener, drained, SLOW_HEAD, std::future::pending()));
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let read = send(&mut conn, "/read", b"hello").await;
        assert!(read.starts_with("http/1.1 200") && read.contains("connection: close"), "{read}");
    }
}
