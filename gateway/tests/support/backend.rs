//! A backend that records every request it receives and answers with JSON naming the path, so
//! tests can assert what reached it — and what did not.

use std::sync::{Arc, Mutex};

use axum::{
    body::Bytes,
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode},
    response::IntoResponse,
    Json,
};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone, Default)]
pub struct Backend {
    seen: Arc<Mutex<Vec<Seen>>>,
    pub url: String,
}

impl Backend {
    pub async fn spawn() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Backend { url: format!("http://{}", listener.local_addr().unwrap()), ..Default::default() };
        let app = axum::Router::new().fallback(record).with_state(backend.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        backend
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("the backend saw a request")
    }
}

async fn record(State(backend): State<Backend>, req: Request) -> impl IntoResponse {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let path = parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
    backend.seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        path_and_query: path.clone(),
        headers: parts.headers,
        body,
    });
    let status = if parts.method == Method::POST { StatusCode::CREATED } else { StatusCode::OK };
    (status, Json(json!({ "backend": "recorder", "path": path })))
}
