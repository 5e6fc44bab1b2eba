//! The sender: works the mail queue over SMTP.
//!
//! - Claims due mails (marked SENDING with a lease, `FOR UPDATE SKIP LOCKED`: replicas share the
//!   work), renders each with the patient's current contact, sends it, marks it SENT.
//! - SMTP down or refusing for now: the mail goes back to PENDING, due again after a backoff that
//!   doubles per attempt (capped); nothing is dropped. A permanent refusal (5xx) or an address
//!   that cannot be a mailbox is FAILED.
//! - Every attempt of a mail carries the same `Message-ID` (`<mail id@patient-platform>`): the
//!   mail's idempotency key. A crash after the server accepted a mail but before it was marked
//!   SENT leaves it SENDING; when the lease ends it is sent again with that same Message-ID, so
//!   the one duplicate such a crash can cause is recognisable as one by mail systems, which
//!   de-duplicate on Message-ID. That window is one SMTP reply to one database update wide.
//! - A mail whose patient is not known yet waits (the patient's event may come after the
//!   appointment's); a deleted patient's mail is cancelled. Logs name mail ids and kinds only.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use chrono::Utc;
use common::metrics::Registry;
use lettre::{
    message::{header::ContentType, Mailbox, MultiPart, SinglePart},
    transport::smtp::authentication::Credentials,
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{SenderArgs, SmtpArgs},
    mails::{self, Claimed, Kind, Outcome},
    templates::Templates,
};

pub struct Sender {
    pub db: PgPool,
    pub smtp: AsyncSmtpTransport<Tokio1Executor>,
    pub from: Mailbox,
    pub templates: Templates,
    pub args: SenderArgs,
    pub metrics: Arc<Registry>,
}

/// `notification_mails_total{result=…}`, every outcome present from the start.
pub const RESULTS: [&str; 4] = ["sent", "retried", "failed", "cancelled"];

fn series(result: &str) -> String {
    format!("notification_mails_total{{result=\"{result}\"}}")
}

/// The SMTP transport of `args` (plain on a local server, STARTTLS required when asked).
pub fn transport(args: &SmtpArgs) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let mut builder = if args.smtp_starttls {
        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&args.smtp_host).context("invalid SMTP host")?
    } else {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&args.smtp_host)
    };
    builder = builder.port(args.smtp_port).timeout(Some(Duration::from_millis(args.smtp_timeout_ms)));
    if let (Some(user), Some(password)) = (&args.smtp_username, &args.smtp_password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
    }
    Ok(builder.build())
}

impl Sender {
    /// Sends until `stop`.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        for result in RESULTS {
            self.metrics.add(&series(result), 0);
        }
        while !stop.is_cancelled() {
            let busy = match self.round().await {
                Ok(n) => n > 0,
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "mail queue unavailable; retrying");
                    false
                }
            };
            if !busy {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(self.args.poll()) => {}
                }
            }
        }
        tracing::info!("mail sender stopped");
        Ok(())
    }

    /// One batch of due mails; how many were claimed.
    async fn round(&self) -> anyhow::Result<usize> {
        let lease = Duration::from_millis(self.args.sender_lease_ms);
        let claimed = mails::claim_due(&self.db, self.args.sender_batch, lease).await.context("failed to claim mails")?;
        for mail in &claimed {
            let outcome = self.attempt(mail).await?;
            mails::finish(&self.db, mail.id, outcome).await.context("failed to record the outcome")?;
            let result = match outcome {
                Outcome::Sent => "sent",
                Outcome::Retry { .. } => "retried",
                Outcome::Failed(_) => "failed",
                Outcome::Cancelled => "cancelled",
            };
            self.metrics.inc(&series(result));
            tracing::info!(mail_id = %mail.id, kind = %mail.kind, attempt = mail.attempts, result, "mail attempt");
        }
        Ok(claimed.len())
    }

    fn retry(&self, mail: &Claimed, error: &'static str) -> Outcome {
        let doublings = u32::try_from(mail.attempts.saturating_sub(1)).unwrap_or(0).min(20);
        let wait = self.args.sender_retry_ms.saturating_mul(1 << doublings).min(self.args.sender_retry_max_ms);
        Outcome::Retry { at: Utc::now() + chrono::Duration::milliseconds(i64::try_from(wait).unwrap_or(i64::MAX)), error }
    }

    async fn attempt(&self, mail: &Claimed) -> anyhow::Result<Outcome> {
        let kind = Kind::parse(&mail.kind).context("unknown mail kind in the queue")?;
        let (name, email) = match mails::contact(&self.db, mail.patient_id).await? {
            Some(Some(contact)) => contact,
            Some(None) => return Ok(Outcome::Cancelled),
            None if Utc::now() - mail.created_at > chrono::Duration::seconds(self.args.contact_wait_secs as i64) => {
                return Ok(Outcome::Failed("the patient never became known"));
            }
            None => return Ok(self.retry(mail, "the patient is not known yet")),
        };
        let Ok(to) = email.parse().map(|address| Mailbox::new(Some(name.clone()), address)) else {
            return Ok(Outcome::Failed("the patient's email address is not a mailbox"));
        };
        let when = |t: Option<chrono::DateTime<Utc>>| t.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_default();
        let (starts_at, ends_at) = (when(mail.starts_at), when(mail.ends_at));
        let appointment_id = mail.appointment_id.map(|id| id.to_string()).unwrap_or_default();
        let values =
            [("name", name.as_str()), ("starts_at", &starts_at), ("ends_at", &ends_at), ("appointment_id", &appointment_id)];
        let rendered = self.templates.render(kind, &values);
        let message = Message::builder()
            .message_id(Some(format!("<{}@patient-platform>", mail.id)))
            .from(self.from.clone())
            .to(to)
            .subject(rendered.subject)
            .multipart(
                MultiPart::alternative()
                    .singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(rendered.text))
                    .singlepart(SinglePart::builder().header(ContentType::TEXT_HTML).body(rendered.html)),
            )
            .context("failed to build the message")?;
        Ok(match self.smtp.send(message).await {
            Ok(_) => Outcome::Sent,
            Err(err) if err.is_permanent() => Outcome::Failed("the mail server refused the mail permanently"),
            Err(_) => self.retry(mail, "the mail server is unavailable"),
        })
    }
}
