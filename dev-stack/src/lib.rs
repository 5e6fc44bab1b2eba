//! Launchers for the platform's real infrastructure as local processes — no Docker, no mocks.
//!
//! One place used by both the dev command (`cargo xtask`) and the test suites:
//! - [`postgres`]: a private PostgreSQL cluster from Debian's server binaries.
//! - [`keycloak`]: Keycloak from Maven Central, realm imported at start.
//! - [`kafka`]: a single-node KRaft Apache Kafka from Maven Central jars.
//! - [`grpcurl`]: the grpcurl CLI from its Go module.
//! - [`jaeger`], [`mailpit`], [`helm`]: the trace backend, the mail server and Helm, built from
//!   their Go modules; [`python`]: schemathesis, kubernetes-validate and aiosmtpd from PyPI;
//!   [`plain_smtp`]: a mail server without SMTPUTF8 (aiosmtpd).
//! - [`browser`]: headless Chromium + playwright-core for UI journeys.
//! - [`kube`]: Kubernetes' API server (from its Go modules) and etcd, for server-side dry runs.
//! - [`cluster`]: a single-node Kubernetes (containerd, kubelet, kube-proxy, CoreDNS) for the chart.
//! - [`docker`]: the Docker engine, compose, and local equivalents of every image.
//! - [`paths`]: where state and caches live (outside the work tree).
//! - [`services`]: the platform's own services as background processes.
//! - [`suite`]: the runner of `cargo xtask test` (the local and the Docker pass side by side).
//! - [`net`]: free loopback ports.
//! - [`tokens`]: RSA test keys (openssl CLI), JWKS entries and signed test tokens.

pub mod browser;
pub mod cluster;
pub mod containers;
pub mod docker;
pub mod download;
pub mod go;
pub mod grpcurl;
pub mod helm;
pub mod jaeger;
pub mod java;
pub mod kafka;
pub mod keycloak;
pub mod kube;
pub mod mailpit;
pub mod net;
pub mod paths;
pub mod plain_smtp;
pub mod postgres;
mod process;
pub mod python;
pub mod services;
pub mod suite;
pub mod tokens;

pub use postgres::PgCluster;
pub use process::fresh_test_dir;
