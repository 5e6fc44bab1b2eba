//! Serves `/health/live` on `HTTP_ADDR` until stopped.

use axum::{routing::get, Router};
use clap::Parser;

#[derive(Parser)]
#[command(name = "gateway")]
struct Settings {
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:4004")]
    http_addr: std::net::SocketAddr,
    #[command(flatten)]
    log: common::telemetry::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    common::telemetry::init(&settings.log);
    let app = Router::new().route("/health/live", get(|| async { "UP" }));
    let listener = tokio::net::TcpListener::bind(settings.http_addr).await?;
    axum::serve(listener, app).with_graceful_shutdown(common::shutdown::signal()).await?;
    Ok(())
}
