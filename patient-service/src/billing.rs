//! The gRPC client of billing-service, with a deadline on every call, this service's own access
//! token on every call (SPEC §10), and one mapping of its failures to our error type.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use proto::billing::{billing_service_client::BillingServiceClient, BillingAccount, BillingRequest, GetBillingAccountRequest};
use tonic::{metadata::MetadataValue, transport::Channel, Code, Request};
use uuid::Uuid;
use verifier::client::ServiceToken;

use crate::{domain::ValidPatient, Error};

/// A cheap-to-clone client over one lazily (re)connecting channel.
#[derive(Debug, Clone)]
pub struct BillingClient {
    inner: BillingServiceClient<Channel>,
    deadline: Duration,
    token: Arc<ServiceToken>,
}

impl BillingClient {
    /// Does not connect yet: the service starts while billing is still down, and each call
    /// reconnects as needed.
    pub fn new(url: &str, connect_timeout: Duration, deadline: Duration, token: Arc<ServiceToken>) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(url.to_owned())
            .with_context(|| "invalid BILLING_GRPC_URL".to_string())?
            .connect_timeout(connect_timeout)
            .timeout(deadline)
            .connect_lazy();
        Ok(Self { inner: BillingServiceClient::new(channel), deadline, token })
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
        tracing::info!(account_id = %account.account_id, "billing account ready");
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

    /// One RPC with our token and the deadline. A token billing no longer accepts (expired
    /// early, signing key rotated) is dropped and the call made once more with a fresh one;
    /// both RPCs are idempotent.
    async fn call<M: Clone, T, F, Fut>(&self, rpc: F, message: M) -> Result<Result<T, tonic::Status>, Error>
    where
        F: Fn(BillingServiceClient<Channel>, Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let first = self.within_deadline(rpc(self.inner.clone(), self.request(message.clone()).await?)).await?;
        match first {
            Err(status) if status.code() == Code::Unauthenticated => {
                tracing::warn!("billing refused our service token; fetching a new one");
                self.token.forget().await;
                self.within_deadline(rpc(self.inner.clone(), self.request(message).await?)).await
            }
            other => Ok(other),
        }
    }

    /// The deadline enforced locally too, so a peer that accepts connections but never answers
    /// (stuck handshake included) cannot hold a request longer.
    async fn within_deadline<T>(&self, call: impl std::future::Future<Output = T>) -> Result<T, Error> {
        tokio::time::timeout(self.deadline, call).await.map_err(|_| {
            tracing::warn!(deadline_ms = self.deadline.as_millis() as u64, "billing call exceeded its deadline");
            Error::BillingUnavailable
        })
    }

    /// The message with the deadline and `authorization: Bearer <our token>`.
    async fn request<T>(&self, message: T) -> Result<Request<T>, Error> {
        // Getting the token counts against the call's deadline (Keycloak slow: 503, not a hang).
        let token = tokio::time::timeout(self.deadline, self.token.bearer())
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|fetched| fetched)
            .map_err(|e| {
                tracing::warn!(error = %format!("{e:#}"), "no service token for the billing call");
                Error::BillingUnavailable
            })?;
        let value = MetadataValue::try_from(format!("Bearer {}", token.expose())).context("token is not a header value")?;
        let mut request = Request::new(message);
        request.set_timeout(self.deadline);
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// Transient failures (down, overloaded, too slow) become a retryable 503; anything else is a
/// billing bug and a 502.
fn map_status(status: tonic::Status) -> Error {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted | Code::Cancelled => {
            tracing::warn!(code = ?status.code(), "billing call failed transiently");
            Error::BillingUnavailable
        }
        _ => Error::BillingFailed(status),
    }
}
