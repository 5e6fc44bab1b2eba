//! Cross-cutting code shared by every service of the platform, so that no service copies it:
//! the runtime and its threads' scheduling, telemetry set-up, database settings and helpers, health routes, the shutdown signal,
//! the HTTP server with its time limits, RFC 9457 problem bodies and the validated [`email::Email`] type.

pub mod breaker;
pub mod conditional;
pub mod db;
pub mod edge;
pub mod email;
pub mod extract;
pub mod health;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod keepalive;
pub mod metrics;
pub mod name;
pub mod openapi;
#[cfg(feature = "kafka")]
pub mod outbox;
pub mod problem;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod tasks;
pub mod telemetry;
pub mod text;
#[cfg(feature = "zone")]
pub mod zone;
