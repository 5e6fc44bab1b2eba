//! Extractors whose rejections are our problem responses instead of axum's plain-text ones: the
//! shared body and query extractors, and the patient id of the path.

use axum::{
    extract::{FromRequestParts, Path},
    http::request::Parts,
};
pub use common::extract::{AppJson, AppQuery};
use uuid::Uuid;

use crate::Error;

/// The `{id}` path segment as a UUID (400 when it is not one).
pub struct PatientId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PatientId {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) =
            Path::<String>::from_request_parts(parts, state).await.map_err(|_| Error::BadRequest("missing patient id".into()))?;
        crate::domain::parse_uuid(&raw)
            .map(Self)
            .ok_or_else(|| Error::BadRequest("patient id must be a UUID like 123e4567-e89b-12d3-a456-426614174000".into()))
    }
}
