//! The sender: works the mail queue over SMTP.
//!
//! - Claims due mails (marked SENDING with a lease, `FOR UPDATE SKIP LOCKED`: replicas share the
//!   work), renders each with the patient's current contact, sends it, marks it SENT.
//! - SMTP down or refusing for now: the mail goes back to PENDING, due again after a backoff that
//!   doubles per attempt (capped); nothing is dropped but a reminder whose appointment has
//!   started meanwhile (CANCELLED). A permanent refusal of the mail itself (its recipient, mailbox,
//!   size or content: see `refuses_the_mail`), an address that cannot be a mailbox, or one with a
//!   non-ASCII local part for a server without SMTPUTF8 is FAILED (a non-ASCII domain is sent as
//!   its `xn--` A-label, which every server takes); a server refusing this service
//!   (authentication, relaying, protocol) is retried like an outage and logged as an error, so
//!   fixing the credentials loses nothing.
//! - A claim is renewed right before its mail is sent and the outcome is recorded only for that
//!   same claim (its attempt number): a mail cancelled meanwhile, or taken over by another sender
//!   after a lease ran out, is not sent (or recorded) by this one.
//! - Every attempt of a mail carries the same `Message-ID` (`<mail id@patient-platform>`): the
//!   mail's idempotency key. SMTP has no way to ask whether a message arrived, so one window
//!   remains: our crash after the server accepted a mail but before it was marked SENT (recording
//!   SENT is retried while the lease lasts, so a database hiccup alone does not open it), or the
//!   server dying after it stored a mail but before it said so. The mail is then sent again: at
//!   most one duplicate per such crash, carrying the same Message-ID, so it can be recognised as
//!   one (mail stores that de-duplicate on Message-ID drop it; Mailpit shows both).
//! - A mail whose patient is not known yet waits (the patient's event may come after the
//!   appointment's); a deleted patient's mail is cancelled. Logs name mail ids and kinds only.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use chrono::{DateTime, Utc};
use common::{metrics::Registry, zone::Zone};
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
    /// Bound of one whole SMTP conversation (the transport's own timeout covers connecting only).
    pub smtp_timeout: Duration,
    pub from: Mailbox,
    pub templates: Templates,
    /// Whose clock the appointment times in mails are on.
    pub zone: Zone,
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
            let busy = match self.round(&stop).await {
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

    /// One batch of due mails (until `stop`: the rest of the batch is due again when its lease
    /// ends); how many were claimed.
    async fn round(&self, stop: &CancellationToken) -> anyhow::Result<usize> {
        let lease = Duration::from_millis(self.args.sender_lease_ms);
        let claimed = mails::claim_due(&self.db, self.args.sender_batch, lease).await.context("failed to claim mails")?;
        for mail in &claimed {
            if stop.is_cancelled() {
                break;
            }
            let renewed_at = tokio::time::Instant::now();
            if !mails::renew(&self.db, mail.id, mail.attempts, lease).await.context("failed to renew a claim")? {
                tracing::info!(mail_id = %mail.id, "mail cancelled or taken over meanwhile; not sent");
                continue;
            }
            let outcome = match self.attempt(mail).await {
                Ok(outcome) => outcome,
                Err(err) => {
                    tracing::warn!(mail_id = %mail.id, error = %format!("{err:#}"), "mail attempt failed");
                    self.retry(mail, "the attempt failed before sending")
                }
            };
            self.record(mail, outcome, renewed_at + lease).await?;
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

    /// Records the outcome; a SENT one is retried while the claim lasts (`claim_ends`), since a
    /// mail left SENDING would be sent again once it ends.
    async fn record(&self, mail: &Claimed, outcome: Outcome, claim_ends: tokio::time::Instant) -> anyhow::Result<()> {
        let deadline = claim_ends;
        let mut wait = Duration::from_millis(100);
        loop {
            match mails::finish(&self.db, mail.id, mail.attempts, outcome).await {
                Ok(()) => return Ok(()),
                Err(err) if matches!(outcome, Outcome::Sent) && tokio::time::Instant::now() + wait < deadline => {
                    tracing::warn!(mail_id = %mail.id, error = %err, "recording a sent mail failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(err) => return Err(anyhow::Error::new(err).context("failed to record the outcome")),
            }
        }
    }

    fn retry(&self, mail: &Claimed, error: &'static str) -> Outcome {
        let doublings = u32::try_from(mail.attempts.saturating_sub(1)).unwrap_or(0).min(20);
        let wait = self.args.sender_retry_ms.saturating_mul(1 << doublings).min(self.args.sender_retry_max_ms);
        Outcome::Retry { at: Utc::now() + chrono::Duration::milliseconds(i64::try_from(wait).unwrap_or(i64::MAX)), error }
    }

    async fn attempt(&self, mail: &Claimed) -> anyhow::Result<Outcome> {
        let kind = Kind::parse(&mail.kind).context("unknown mail kind in the queue")?;
        // A reminder is for before its appointment: one held up past the start (the mail server
        // down, the patient not known yet) is dropped.
        if kind == Kind::Reminder && mail.starts_at.is_some_and(|starts| starts <= Utc::now()) {
            return Ok(Outcome::Cancelled);
        }
        let (name, email) = match mails::contact(&self.db, mail.patient_id).await? {
            Some(Some(contact)) => contact,
            Some(None) => return Ok(Outcome::Cancelled),
            None if Utc::now() - mail.created_at > chrono::Duration::seconds(self.args.contact_wait_secs as i64) => {
                return Ok(Outcome::Failed("the patient never became known"));
            }
            None => return Ok(self.retry(mail, "the patient is not known yet")),
        };
        let Some(address) = deliverable(&email) else {
            return Ok(Outcome::Failed("the patient's email address is not a mailbox"));
        };
        let needs_smtputf8 = !AsRef::<str>::as_ref(&address).is_ascii();
        let to = Mailbox::new(Some(name.clone()), address);
        let [starts_at, ends_at, time_zone] = match (mail.starts_at, mail.ends_at) {
            (Some(starts), Some(ends)) => appointment_times(self.zone, starts, ends),
            _ => Default::default(),
        };
        let appointment_id = mail.appointment_id.map(|id| id.to_string()).unwrap_or_default();
        let values = [
            ("name", name.as_str()),
            ("starts_at", &starts_at),
            ("ends_at", &ends_at),
            ("time_zone", &time_zone),
            ("appointment_id", &appointment_id),
        ];
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
        // Bounded, and well inside the claim: a stalled server must not hold the mail past its
        // lease (another sender would take it over while this conversation might still finish).
        let bound = self.smtp_timeout.min(Duration::from_millis(self.args.sender_lease_ms) / 2);
        Ok(match tokio::time::timeout(bound, self.smtp.send(message)).await {
            Ok(Ok(_)) => Outcome::Sent,
            // lettre refuses to send a non-ASCII address to a server without SMTPUTF8: this
            // server can never take the mail.
            Ok(Err(err)) if err.is_client() && needs_smtputf8 && reply_text(&err).contains("SMTPUTF8") => {
                Outcome::Failed("the mail server cannot take a non-ASCII address (it lacks SMTPUTF8)")
            }
            Ok(Err(err)) if err.is_client() => {
                tracing::error!(mail_id = %mail.id, "this service and the mail server do not agree (STARTTLS or authentication mechanism): mails wait until that is fixed");
                self.retry(mail, "the mail server and this service do not agree (STARTTLS or authentication mechanism)")
            }
            Ok(Err(err)) if err.status().is_some_and(|code| refuses_the_mail(code.into(), &reply_text(&err))) => {
                Outcome::Failed("the mail server refused the mail permanently")
            }
            Ok(Err(err)) if err.is_permanent() => {
                let code = err.status().map(u16::from);
                tracing::error!(mail_id = %mail.id, code, "the mail server refuses this service (authentication or protocol): mails wait until that is fixed");
                self.retry(mail, "the mail server refuses this service")
            }
            Ok(Err(_)) => self.retry(mail, "the mail server is unavailable"),
            Err(_) => self.retry(mail, "the mail server did not answer in time"),
        })
    }
}

/// An appointment's start and end on `zone`'s clock (`2027-01-15 09:00`), and the name of that
/// clock's time at the start (`CET`; where a zone has no abbreviation, its offset).
fn appointment_times(zone: Zone, starts: DateTime<Utc>, ends: DateTime<Utc>) -> [String; 3] {
    [zone.wall_clock(starts), zone.wall_clock(ends), zone.abbreviation(starts)]
}

/// The address to mail `email` at, its domain in ASCII (an internationalised domain as its
/// `xn--` A-label): such an address needs no SMTPUTF8, which many servers lack; only a non-ASCII
/// local part does. None when it cannot be a mailbox.
fn deliverable(email: &str) -> Option<lettre::Address> {
    let (local, domain) = email.rsplit_once('@')?;
    // An address literal (`[192.0.2.1]`) is ASCII already.
    let domain = if domain.starts_with('[') { domain.to_owned() } else { idna::domain_to_ascii(domain).ok()? };
    lettre::Address::new(local, domain).ok()
}

/// The server's reply text of an SMTP error (never logged: it may echo an address).
fn reply_text(err: &lettre::transport::smtp::Error) -> String {
    std::error::Error::source(err).map(ToString::to_string).unwrap_or_default()
}

/// Whether a permanent (5xx) reply refuses the mail itself rather than this service's session.
///
/// The enhanced status code (RFC 3463) at the start of the reply decides when the server sends
/// one: the recipient's address (5.1.x, but 5.1.7/5.1.8 name our sender), their mailbox (5.2.x),
/// the message's size (5.3.4) or content (5.6.x) fail the mail; anything else (5.5.x protocol,
/// 5.7.x authentication, relaying, policy, 5.0/5.3/5.4 the server or routing) is the operator's
/// to fix, and the mail waits for it rather than being lost. Without one, the reply code alone:
/// 550–553, 555, 556 refuse a mailbox or address; 500–504, 530–538 and 554 (also said at the
/// greeting: no service for us) do not.
fn refuses_the_mail(code: u16, reply: &str) -> bool {
    match enhanced_status(reply) {
        Some((class, subject, detail)) => {
            class == 5
                && match subject {
                    1 => !matches!(detail, 7 | 8),
                    2 | 6 => true,
                    3 => detail == 4,
                    _ => false,
                }
        }
        None => matches!(code, 550..=553 | 555 | 556),
    }
}

/// `class.subject.detail` at the start of a reply (e.g. `5.1.1 User unknown`).
fn enhanced_status(reply: &str) -> Option<(u16, u16, u16)> {
    let mut parts = reply.split_whitespace().next()?.split('.');
    let mut next = || parts.next()?.parse::<u16>().ok();
    let status = (next()?, next()?, next()?);
    (parts.next().is_none() && matches!(status.0, 2 | 4 | 5)).then_some(status)
}

#[cfg(test)]
mod tests {
    use super::{appointment_times, deliverable, refuses_the_mail};

    #[test]
    fn appointment_times_are_on_the_configured_clock() {
        let at = |raw: &str| chrono::DateTime::parse_from_rfc3339(raw).unwrap().with_timezone(&chrono::Utc);
        let (starts, ends) = (at("2027-01-15T08:00:00Z"), at("2027-01-15T08:30:00Z"));
        assert_eq!(appointment_times(Default::default(), starts, ends), ["2027-01-15 08:00", "2027-01-15 08:30", "UTC"]);
        let berlin = "Europe/Berlin".parse().unwrap();
        assert_eq!(appointment_times(berlin, starts, ends), ["2027-01-15 09:00", "2027-01-15 09:30", "CET"]);
        let summer = at("2027-07-15T08:00:00Z");
        assert_eq!(appointment_times(berlin, summer, summer)[2], "CEST");
    }

    #[test]
    fn an_internationalised_domain_is_mailed_as_its_a_label() {
        let address = |email: &str| deliverable(email).map(|a| a.to_string());
        assert_eq!(address("ann@bücher.example").as_deref(), Some("ann@xn--bcher-kva.example"));
        assert_eq!(address("ann@example.org").as_deref(), Some("ann@example.org"));
        assert_eq!(address("jösé@example.org").as_deref(), Some("jösé@example.org"), "a local part stays as it is");
        assert_eq!(address("ann@[192.0.2.1]").as_deref(), Some("ann@[192.0.2.1]"));
        assert_eq!(address("ann@"), None);
        assert_eq!(address("no-at-sign"), None);
    }

    #[test]
    fn only_refusals_of_the_mail_itself_fail_it() {
        // Without an enhanced status: the reply code.
        for code in [550, 551, 552, 553, 555, 556] {
            assert!(refuses_the_mail(code, "Chaos recipient error"), "{code} refuses the mail");
        }
        for code in [500, 501, 502, 503, 504, 530, 534, 535, 538, 554] {
            assert!(!refuses_the_mail(code, "Authentication required"), "{code} leaves the mail to be retried");
        }
        // With one: it decides, whatever the code.
        for reply in ["5.1.1 User unknown", "5.1.10 Null MX", "5.2.2 Mailbox full", "5.3.4 Message too big", "5.6.0 Bad content"]
        {
            assert!(refuses_the_mail(550, reply), "{reply}");
        }
        for reply in [
            "5.7.1 Relay access denied",
            "5.7.8 Authentication credentials invalid",
            "5.1.7 Bad sender address",
            "5.5.2 Syntax error",
            "5.0.0 Service unavailable",
            "5.4.4 Unable to route",
        ] {
            assert!(!refuses_the_mail(550, reply), "{reply}");
        }
        assert!(!refuses_the_mail(554, "5.7.1 Client host rejected"));
        assert!(refuses_the_mail(554, "5.1.1 Recipient rejected"));
        // Not a status: the code decides.
        assert!(refuses_the_mail(550, "5.1 is not a status"));
        assert!(!refuses_the_mail(554, "mail.example.org no SMTP service here"));
    }
}
