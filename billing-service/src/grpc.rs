//! The `BillingService` gRPC implementation.

use std::sync::Arc;

use common::metrics::Registry;
use proto::billing::{
    billing_service_server::BillingService, BillingAccount, BillingRequest, BillingResponse, GetBillingAccountRequest,
};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::{
    domain::{parse_patient_id, NewAccount},
    repo, Error,
};

/// Billing accounts backed by PostgreSQL.
#[derive(Debug, Clone)]
pub struct BillingGrpc {
    pool: PgPool,
    /// `billing_accounts_total{result="created|existing"}`.
    metrics: Arc<Registry>,
}

impl BillingGrpc {
    pub fn new(pool: PgPool, metrics: Arc<Registry>) -> Self {
        Self { pool, metrics }
    }
}

#[tonic::async_trait]
impl BillingService for BillingGrpc {
    #[tracing::instrument(skip_all, fields(patient_id))]
    async fn create_billing_account(&self, request: Request<BillingRequest>) -> Result<Response<BillingResponse>, Status> {
        let new = NewAccount::try_from(request.into_inner())?;
        tracing::Span::current().record("patient_id", tracing::field::display(new.patient_id));
        let (account, created) = repo::create_or_get(&self.pool, &new).await.map_err(Error::from)?;
        self.metrics.inc(if created {
            "billing_accounts_total{result=\"created\"}"
        } else {
            "billing_accounts_total{result=\"existing\"}"
        });
        tracing::info!(account_id = %account.id, created, "billing account ready");
        Ok(Response::new(BillingResponse { account_id: account.id.to_string(), status: account.status }))
    }

    #[tracing::instrument(skip_all, fields(patient_id))]
    async fn get_billing_account(&self, request: Request<GetBillingAccountRequest>) -> Result<Response<BillingAccount>, Status> {
        let patient_id = parse_patient_id(&request.into_inner().patient_id)?;
        tracing::Span::current().record("patient_id", tracing::field::display(patient_id));
        let account = repo::find_by_patient(&self.pool, patient_id).await.map_err(Error::from)?.ok_or(Error::NotFound)?;
        Ok(Response::new(BillingAccount {
            account_id: account.id.to_string(),
            patient_id: account.patient_id.to_string(),
            status: account.status,
            created_at: account.created_at.to_rfc3339(),
        }))
    }
}
