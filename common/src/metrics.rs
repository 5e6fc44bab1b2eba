//! Prometheus metrics for every service: one registry of counters and gauges, an HTTP middleware counting
//! requests by method, route template (never the concrete path: it may carry ids or filters)
//! and status, and the `/metrics` route rendering the text exposition format.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
    routing::get,
    Router,
};

/// Monotonic counters and gauges keyed by their full series name (`name{labels}`).
#[derive(Debug, Default)]
pub struct Registry {
    counters: Mutex<BTreeMap<String, u64>>,
    gauges: Mutex<BTreeMap<String, i64>>,
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds one to `series`, e.g. `analytics_events_total{result="applied"}`.
    pub fn inc(&self, series: &str) {
        self.add(series, 1);
    }

    pub fn add(&self, series: &str, n: u64) {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        // Hot path (every request): no allocation once the series exists.
        match counters.get_mut(series) {
            Some(value) => *value += n,
            None => {
                counters.insert(series.to_owned(), n);
            }
        }
    }

    /// The current value of `series` (0 when never counted).
    pub fn get(&self, series: &str) -> u64 {
        self.counters.lock().unwrap_or_else(|e| e.into_inner()).get(series).copied().unwrap_or_default()
    }

    /// Sets the gauge `series` (a state, a level) to `value`.
    pub fn set_gauge(&self, series: &str, value: i64) {
        let mut gauges = self.gauges.lock().unwrap_or_else(|e| e.into_inner());
        match gauges.get_mut(series) {
            Some(current) => *current = value,
            None => {
                gauges.insert(series.to_owned(), value);
            }
        }
    }

    /// The current value of the gauge `series` (0 when never set).
    pub fn gauge(&self, series: &str) -> i64 {
        self.gauges.lock().unwrap_or_else(|e| e.into_inner()).get(series).copied().unwrap_or_default()
    }

    /// The text exposition format, one `# TYPE` line per metric name.
    pub fn render(&self) -> String {
        let mut out = String::new();
        render_family(&mut out, "counter", &self.counters.lock().unwrap_or_else(|e| e.into_inner()));
        render_family(&mut out, "gauge", &self.gauges.lock().unwrap_or_else(|e| e.into_inner()));
        out
    }
}

fn render_family<V: std::fmt::Display>(out: &mut String, kind: &str, series: &BTreeMap<String, V>) {
    let mut last_name = "";
    for (series, value) in series.iter() {
        let name = series.split('{').next().unwrap_or(series);
        if name != last_name {
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            last_name = name;
        }
        out.push_str(&format!("{series} {value}\n"));
    }
}

/// `GET /metrics`.
pub fn routes(registry: Arc<Registry>) -> Router {
    Router::new().route("/metrics", get(|State(r): State<Arc<Registry>>| async move { r.render() })).with_state(registry)
}

/// Middleware counting `http_requests_total{method,route,status}`; installed as a route layer
/// by [`crate::edge::Edge::wrap`].
pub async fn track(State(registry): State<Arc<Registry>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let response = next.run(req).await;
    registry
        .inc(&format!("http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{}\"}}", response.status().as_u16()));
    response
}

#[cfg(test)]
mod tests {
    use super::Registry;

    #[test]
    fn renders_counters_grouped_by_name() {
        let r = Registry::default();
        r.inc("b_total{x=\"1\"}");
        r.add("b_total{x=\"2\"}", 3);
        r.inc("a_total");
        r.set_gauge("state{d=\"x\"}", 2);
        r.set_gauge("state{d=\"x\"}", 1);
        assert_eq!(
            r.render(),
            "# TYPE a_total counter\na_total 1\n# TYPE b_total counter\nb_total{x=\"1\"} 1\nb_total{x=\"2\"} 3\n\
             # TYPE state gauge\nstate{d=\"x\"} 1\n"
        );
        assert_eq!(r.get("b_total{x=\"2\"}"), 3);
    }
}
