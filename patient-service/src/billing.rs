//! The gRPC client of billing-service, with a deadline on every call and one mapping of its
//! failures to our error type.

use std::time::Duration;

use anyhow::Context;
use proto::billing::{billing_service_client::BillingServiceClient, BillingAccount, BillingRequest, GetBillingAccountRequest};
use tonic::{transport::Channel, Code, Request};
use uuid::Uuid;

use crate::{domain::ValidPatient, Error};

/// A cheap-to-clone client over one lazily (re)connecting channel.
#[derive(Debug, Clone)]
pub struct BillingClient {
    inner: BillingServiceClient<Channel>,
    deadline: Duration,
}

impl BillingClient {
    /// Does not connect yet: the service starts while billing is still down, and each call
    /// reconnects as needed.
    pub fn new(url: &str, connect_timeout: Duration, deadline: Duration) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(url.to_owned())
            .with_context(|| "invalid BILLING_GRPC_URL".to_string())?
            .connect_timeout(connect_timeout)
            .timeout(deadline)
            .connect_lazy();
        Ok(Self { inner: BillingServiceClient::new(channel), deadline })
    }

    /// Opens (or returns the existing) billing account of the patient; idempotent on billing's side.
    #[tracing::instrument(skip_all, fields(patient_id = %patient_id))]
    pub async fn create_account(&self, patient_id: Uuid, patient: &ValidPatient) -> Result<String, Error> {
        let request = self.with_deadline(BillingRequest {
            patient_id: patient_id.to_string(),
            name: patient.name.as_str().to_owned(),
            email: patient.email.as_str().to_owned(),
        });
        let mut client = self.inner.clone();
        let account = self.within_deadline(client.create_billing_account(request)).await?.map_err(map_status)?.into_inner();
        tracing::info!(account_id = %account.account_id, "billing account ready");
        Ok(account.account_id)
    }

    /// The patient's account, [`Error::NotFoundDetail`] when billing has none.
    #[tracing::instrument(skip(self))]
    pub async fn account(&self, patient_id: Uuid) -> Result<BillingAccount, Error> {
        let request = self.with_deadline(GetBillingAccountRequest { patient_id: patient_id.to_string() });
        let mut client = self.inner.clone();
        match self.within_deadline(client.get_billing_account(request)).await? {
            Ok(response) => Ok(response.into_inner()),
            Err(status) if status.code() == Code::NotFound => Err(Error::NotFoundDetail("this patient has no billing account")),
            Err(status) => Err(map_status(status)),
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

    fn with_deadline<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.deadline);
        request
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
