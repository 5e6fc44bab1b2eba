//! A static backend: a minimal HTTP server answering every GET with a fixed patient-shaped JSON
//! body. Run as its own process (this binary, `static-backend PORT`), so A/B against it measures
//! the gateway's proxy and auth tax alone.

use std::process::{Child, Command, Stdio};

use axum::{routing::get, Router};

const BODY: &str = r#"{"id":"00000000-0000-4000-8000-000000000000","name":"Static Patient","email":"static@example.com","address":"1 Static Road","dateOfBirth":"1980-01-01","registeredDate":"2024-01-01"}"#;

pub async fn serve(port: u16) -> anyhow::Result<()> {
    let app = Router::new().fallback(get(|| async { ([("content-type", "application/json")], BODY) }));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// The backend as a child process, killed when the handle drops.
pub struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn(port: u16) -> anyhow::Result<Backend> {
    let child =
        Command::new(std::env::current_exe()?).args(["static-backend", &port.to_string()]).stdout(Stdio::null()).spawn()?;
    dev_stack::net::wait_for_port(port, std::time::Duration::from_secs(10))?;
    Ok(Backend(child))
}
