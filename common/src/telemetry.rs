//! One tracing set-up for every service: `RUST_LOG`-style filter, text or JSON lines on stdout.
//!
//! Services log identifiers (patient ids, account ids, event ids), never names, emails or
//! addresses: the log pipeline is not a place for personal data.

use std::io::IsTerminal;

use clap::Args;
use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};

/// Logging settings, flattened into each service's settings.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Filter directives, e.g. `info,sqlx=warn` (same syntax as `RUST_LOG`).
    #[arg(long, env = "RUST_LOG", default_value = "info,sqlx=warn,h2=warn,tower=warn")]
    pub log_filter: String,
    /// Emit JSON lines instead of human-readable text (for log shippers).
    #[arg(long, env = "LOG_JSON", default_value_t = false)]
    pub log_json: bool,
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if args.log_json {
        registry.with(fmt::layer().json().flatten_event(true)).init();
    } else {
        // Colours only for a person at a terminal, never into log files.
        registry.with(fmt::layer().with_ansi(std::io::stdout().is_terminal())).init();
    }
}
