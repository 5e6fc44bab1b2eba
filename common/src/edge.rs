//! One HTTP edge for every service: the layers every API gets, stacked in one `ServiceBuilder`
//! that reads top to bottom (request id → trace span → request id echoed → body limit), then per
//! route request counting (by route template) around a time limit, and the operational routes
//! beside the API (`/health/live`, `/health/ready` with the service's own checks, `/metrics`). A
//! service builds its pure `app(state) -> Router` and hands it to [`Edge::wrap`]; tests drive the
//! result in-process.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Router,
};
use clap::Parser;
use tower::ServiceBuilder;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::{DefaultOnResponse, TraceLayer},
};
use tracing::Level;

use crate::{health::Readiness, metrics::Registry, problem::Problem};

/// Limits every service's HTTP API applies.
#[derive(Debug, Clone, Parser)]
pub struct EdgeArgs {
    /// Largest accepted request body; larger ones get 413.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,
    /// Time a request may take before it is answered 503 (above every deadline inside it).
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    #[command(flatten)]
    pub drain: crate::shutdown::DrainArgs,
}

impl Default for EdgeArgs {
    fn default() -> Self {
        Self::parse_from(["edge"])
    }
}

/// What the edge needs from the service.
pub struct Edge {
    pub args: EdgeArgs,
    pub metrics: Arc<Registry>,
    pub readiness: Readiness,
}

impl Edge {
    /// `api` with the operational routes beside it and every layer around both.
    pub fn wrap(self, api: Router) -> Router {
        let layers = ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(TraceLayer::new_for_http().make_span_with(span).on_response(DefaultOnResponse::new().level(Level::INFO)))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(DefaultBodyLimit::max(self.args.max_body_bytes));
        // Route layers wrap outside-in: requests are counted around the time limit, so a request
        // cut by it is counted as the 503 it got.
        let limit = Duration::from_millis(self.args.request_timeout_ms);
        api.merge(crate::health::routes(self.readiness))
            .route_layer(middleware::from_fn_with_state(limit, time_limit))
            .route_layer(middleware::from_fn_with_state(self.metrics.clone(), crate::metrics::track))
            .merge(crate::metrics::routes(self.metrics))
            .layer(layers)
    }
}

/// One span per request naming the route template, never the concrete path or query (they may
/// carry ids, names or emails), with the request id and the W3C trace id, so every log line of
/// the request can be found from either.
fn span(req: &Request) -> tracing::Span {
    let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str).unwrap_or("unmatched");
    let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
    let trace_id = crate::telemetry::trace_id(req.headers()).unwrap_or("");
    let span = tracing::info_span!("http", method = %req.method(), route, request_id, trace_id);
    crate::telemetry::continue_trace(&span, req.headers());
    span
}

/// When the edge answers a request 503 (a request extension). Middleware that must leave a
/// trace of every request it lets in (an audit record) runs the rest with [`Deadline::run`]: it
/// gets the same 503 a little earlier, with time left to record it before the edge cuts it off.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: tokio::time::Instant,
    /// Left for the middleware after its inner work is cut: a tenth of the limit, at most 1 s.
    grace: Duration,
}

impl Deadline {
    fn after(limit: Duration) -> Self {
        Self { at: tokio::time::Instant::now() + limit, grace: (limit / 10).min(Duration::from_secs(1)) }
    }

    /// `work`'s response, or the edge's 503 problem when it is not done `grace` before the deadline.
    pub async fn run(self, work: impl std::future::Future<Output = Response>) -> Response {
        let cut = self.at.checked_sub(self.grace).unwrap_or(self.at);
        tokio::time::timeout_at(cut, work).await.unwrap_or_else(|_| {
            tracing::warn!("request exceeded its time limit");
            too_slow()
        })
    }
}

async fn time_limit(State(limit): State<Duration>, mut req: Request, next: Next) -> Response {
    let deadline = Deadline::after(limit);
    req.extensions_mut().insert(deadline);
    tokio::time::timeout_at(deadline.at, next.run(req)).await.unwrap_or_else(|_| {
        tracing::warn!(limit_ms = limit.as_millis() as u64, "request exceeded its time limit");
        too_slow()
    })
}

fn too_slow() -> Response {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "the request took too long; retry later").with_retry_after(5).into_response()
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request as HttpRequest, routing::post};
    use tower::ServiceExt;

    use super::*;

    fn app(ready: bool) -> (Router, Arc<Registry>) {
        let metrics = Registry::new();
        let api = Router::new()
            .route("/echo/{id}", post(|body: axum::body::Bytes| async move { body }))
            .route("/slow", axum::routing::get(|| tokio::time::sleep(Duration::from_secs(60))))
            .route(
                "/recorded",
                axum::routing::get(|req: Request| async move {
                    // Like an audit: the inner work is cut, and there is time to mark the answer.
                    let deadline = *req.extensions().get::<Deadline>().unwrap();
                    let mut resp = deadline
                        .run(async {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            StatusCode::OK.into_response()
                        })
                        .await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    resp.headers_mut().insert("x-recorded", "yes".parse().unwrap());
                    resp
                }),
            );
        let edge = Edge {
            args: EdgeArgs { max_body_bytes: 8, request_timeout_ms: 1_000, ..EdgeArgs::default() },
            metrics: metrics.clone(),
            readiness: Readiness::default().check("keys", move || std::future::ready(ready)),
        };
        (edge.wrap(api), metrics)
    }

    async fn send(app: &Router, req: HttpRequest<Body>) -> Response {
        app.clone().oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn request_ids_are_kept_or_made_and_requests_counted_by_route_template() {
        let (app, metrics) = app(true);
        let kept = send(&app, HttpRequest::post("/echo/42").header("x-request-id", "r-1").body(Body::from("hi")).unwrap()).await;
        assert_eq!(kept.status(), StatusCode::OK);
        assert_eq!(kept.headers()["x-request-id"], "r-1");
        let made = send(&app, HttpRequest::post("/echo/43").body(Body::empty()).unwrap()).await;
        assert_eq!(made.headers()["x-request-id"].len(), 36, "a UUID");
        assert_eq!(metrics.get("http_requests_total{method=\"POST\",route=\"/echo/{id}\",status=\"200\"}"), 2);
    }

    #[tokio::test]
    async fn bodies_over_the_limit_get_413() {
        let (app, _) = app(true);
        let resp = send(&app, HttpRequest::post("/echo/1").body(Body::from("123456789")).unwrap()).await;
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_over_its_time_limit_gets_a_503_problem() {
        let (app, metrics) = app(true);
        let resp = send(&app, HttpRequest::get("/slow").body(Body::empty()).unwrap()).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["content-type"], crate::problem::CONTENT_TYPE);
        assert_eq!(resp.headers()["retry-after"], "5");
        assert_eq!(metrics.get("http_requests_total{method=\"GET\",route=\"/slow\",status=\"503\"}"), 1, "counted");
    }

    #[tokio::test(start_paused = true)]
    async fn work_run_within_the_deadline_is_cut_early_enough_to_record_its_503() {
        let (app, metrics) = app(true);
        let resp = send(&app, HttpRequest::get("/recorded").body(Body::empty()).unwrap()).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["retry-after"], "5");
        assert_eq!(resp.headers()["x-recorded"], "yes", "the middleware finished after the cut");
        assert_eq!(metrics.get("http_requests_total{method=\"GET\",route=\"/recorded\",status=\"503\"}"), 1);
    }

    #[tokio::test]
    async fn readiness_reports_each_check_and_liveness_does_not_depend_on_them() {
        for (ready, status, body) in [
            (true, StatusCode::OK, r#"{"keys":"UP","status":"UP"}"#),
            (false, StatusCode::SERVICE_UNAVAILABLE, r#"{"keys":"DOWN","status":"DOWN"}"#),
        ] {
            let (app, _) = app(ready);
            let resp = send(&app, HttpRequest::get("/health/ready").body(Body::empty()).unwrap()).await;
            assert_eq!(resp.status(), status);
            let bytes = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
            assert_eq!(bytes, body.as_bytes());
            let live = send(&app, HttpRequest::get("/health/live").body(Body::empty()).unwrap()).await;
            assert_eq!(live.status(), StatusCode::OK);
        }
    }
}
