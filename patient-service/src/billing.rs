//! The gRPC client of billing-service, with a deadline on every call, this service's own access
//! token on every call (SPEC §10), retries of transient failures with jittered backoff inside
//! that deadline, a circuit breaker that answers at once while billing is known to be down
//! (SPEC §13), and one mapping of its failures to our error type.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use common::{breaker::Breaker, metrics::Registry, secret::Secret};
use proto::billing::{billing_service_client::BillingServiceClient, BillingAccount, BillingRequest, GetBillingAccountRequest};
use tokio::time::Instant;
use tonic::{metadata::MetadataValue, transport::Channel, Code, Request};
use uuid::Uuid;
use verifier::client::ServiceToken;

use crate::{config::Resilience, domain::ValidPatient, Error};

const RETRIES: &str = "billing_retries_total";

/// The least time an attempt (a retry, or a first try after a slow token fetch) must have before
/// the deadline.
const MIN_ATTEMPT_BUDGET: Duration = Duration::from_millis(100);

/// A cheap-to-clone client over one lazily (re)connecting channel.
#[derive(Debug, Clone)]
pub struct BillingClient {
    inner: BillingServiceClient<Channel>,
    deadline: Duration,
    token: Arc<ServiceToken>,
    breaker: Arc<Breaker>,
    attempts: u32,
    backoff: Duration,
    metrics: Arc<Registry>,
}

impl BillingClient {
    /// Does not connect yet: the service starts while billing is still down, and each call
    /// reconnects as needed.
    pub fn new(
        url: &str,
        connect_timeout: Duration,
        deadline: Duration,
        token: Arc<ServiceToken>,
        resilience: &Resilience,
        metrics: Arc<Registry>,
    ) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(url.to_owned())
            .with_context(|| "invalid BILLING_GRPC_URL".to_string())?
            .connect_timeout(connect_timeout)
            .timeout(deadline)
            .connect_lazy();
        let open_for = Duration::from_millis(resilience.billing_breaker_open_ms);
        let breaker = Arc::new(Breaker::new("billing", resilience.billing_breaker_failures, open_for, metrics.clone()));
        metrics.add(RETRIES, 0);
        Ok(Self {
            inner: BillingServiceClient::new(channel),
            deadline,
            token,
            breaker,
            attempts: resilience.billing_retry_attempts.max(1),
            backoff: Duration::from_millis(resilience.billing_retry_backoff_ms),
            metrics,
        })
    }

    /// Opens (or returns the existing) billing account of the patient; idempotent on billing's side.
    #[tracing::instrument(skip_all, fields(patient_id = %patient_id))]
    pub async fn create_account(&self, patient_id: Uuid, patient: &ValidPatient) -> Result<String, Error> {
        let message = BillingRequest {
            patient_id: patient_id.to_string(),
            name: patient.name.as_str().to_owned(),
            email: patient.email.as_str().to_owned(),
        };
        let account = self
            .call(|mut client, request| async move { client.create_billing_account(request).await }, message)
            .await?
            .map_err(map_status)?
            .into_inner();
        // billing-service logs the account; here it is the create's detail.
        tracing::debug!(account_id = %account.account_id, "billing account ready");
        Ok(account.account_id)
    }

    /// The patient's account, [`Error::NotFoundDetail`] when billing has none.
    #[tracing::instrument(skip(self))]
    pub async fn account(&self, patient_id: Uuid) -> Result<BillingAccount, Error> {
        let message = GetBillingAccountRequest { patient_id: patient_id.to_string() };
        match self.call(|mut client, request| async move { client.get_billing_account(request).await }, message).await? {
            Ok(response) => Ok(response.into_inner()),
            Err(status) if status.code() == Code::NotFound => Err(Error::NotFoundDetail("this patient has no billing account")),
            Err(status) => Err(map_status(status)),
        }
    }

    /// One RPC with our token, inside one deadline for all of its attempts. Transient failures
    /// are retried after a jittered backoff while the deadline leaves room (both RPCs are
    /// idempotent); every attempt passes the circuit breaker, so an open circuit ends the call at
    /// once. A token billing no longer accepts (expired early, signing key rotated) is dropped and
    /// the call made once more with a fresh one.
    async fn call<M: Clone, T, F, Fut>(&self, rpc: F, message: M) -> Result<Result<T, tonic::Status>, Error>
    where
        F: Fn(BillingServiceClient<Channel>, Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = Instant::now() + self.deadline;
        let (mut attempt, mut token_renewed) = (0, false);
        loop {
            attempt += 1;
            let circuit_open = |open: common::breaker::Open| {
                tracing::warn!(retry_after_ms = open.retry_after.as_millis() as u64, "billing circuit open; call refused");
                Error::BillingCircuitOpen(open.retry_after)
            };
            // An open circuit answers at once; else the token (held, or fetched from Keycloak
            // within the deadline) before the attempt is counted: a slow realm must not use up
            // the attempt's time and have billing blamed for the timeout.
            if let Some(open) = self.breaker.refuses() {
                return Err(circuit_open(open));
            }
            let (request, token) = self.request(message.clone(), deadline).await?;
            if Instant::now() + MIN_ATTEMPT_BUDGET >= deadline {
                tracing::warn!("getting the service token took the billing call's deadline");
                return Err(Error::BillingUnavailable);
            }
            let permit = self.breaker.attempt().map_err(circuit_open)?;
            let outcome = match tokio::time::timeout_at(deadline, rpc(self.inner.clone(), request)).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    permit.failed();
                    tracing::warn!(deadline_ms = self.deadline.as_millis() as u64, "billing call exceeded its deadline");
                    return Err(Error::BillingUnavailable);
                }
            };
            match outcome {
                Err(status) if status.code() == Code::Unauthenticated && !token_renewed => {
                    permit.succeeded();
                    tracing::warn!("billing refused our service token; fetching a new one");
                    self.token.forget(&token);
                    token_renewed = true;
                    // Not a failure of billing: the renewed call does not use up an attempt.
                    attempt -= 1;
                }
                Err(status) if transient(status.code()) => {
                    permit.failed();
                    // Full jitter: a random sleep up to backoff × 2^(attempt-1).
                    let ceiling = self.backoff.saturating_mul(1 << (attempt - 1).min(16));
                    let sleep = ceiling.mul_f64(fastrand::f64());
                    // A retry needs time left to be worth making (and a timeout of ours must not
                    // count as billing's failure).
                    if attempt >= self.attempts || Instant::now() + sleep + MIN_ATTEMPT_BUDGET >= deadline {
                        return Ok(Err(status));
                    }
                    tracing::info!(code = ?status.code(), attempt, "billing call failed transiently; retrying");
                    self.metrics.inc(RETRIES);
                    tokio::time::sleep(sleep).await;
                }
                other => {
                    permit.succeeded();
                    return Ok(other);
                }
            }
        }
    }

    /// The message with what is left of the deadline and `authorization: Bearer <our token>`;
    /// and that token.
    async fn request<T>(&self, message: T, deadline: Instant) -> Result<(Request<T>, Secret), Error> {
        // Getting the token counts against the call's deadline (Keycloak slow: 503, not a hang).
        let token = tokio::time::timeout_at(deadline, self.token.bearer())
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|fetched| fetched)
            .map_err(|e| {
                tracing::warn!(error = %format!("{e:#}"), "no service token for the billing call");
                Error::BillingUnavailable
            })?;
        let value = MetadataValue::try_from(format!("Bearer {}", token.expose())).context("token is not a header value")?;
        let mut request = Request::new(message);
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        request.metadata_mut().insert("authorization", value);
        // Billing's spans are children of this call's (W3C trace context in the metadata).
        let mut trace = axum::http::HeaderMap::new();
        common::telemetry::inject(&mut trace);
        if let Some(Ok(traceparent)) = trace.get("traceparent").map(|v| MetadataValue::try_from(v.as_bytes())) {
            request.metadata_mut().insert("traceparent", traceparent);
        }
        Ok((request, token))
    }
}

/// Failures that say nothing about the request itself: billing down, overloaded or too slow.
fn transient(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted | Code::Cancelled)
}

/// Transient failures (down, overloaded, too slow) become a retryable 503; anything else is a
/// billing bug and a 502.
fn map_status(status: tonic::Status) -> Error {
    match status.code() {
        code if transient(code) => {
            tracing::warn!(code = ?status.code(), "billing call failed transiently");
            Error::BillingUnavailable
        }
        _ => Error::BillingFailed(status),
    }
}
