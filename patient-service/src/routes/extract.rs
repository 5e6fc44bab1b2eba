//! Extractors whose rejections are our problem responses instead of axum's plain-text ones.

use axum::{
    extract::{
        rejection::{JsonRejection, QueryRejection},
        FromRequest, FromRequestParts, Path, Query, Request,
    },
    http::{request::Parts, StatusCode},
};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::Error;

/// `Json<T>` with 415 / 413 / 400 problem responses.
pub struct AppJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for AppJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(Error::UnsupportedMediaType),
            Err(JsonRejection::JsonSyntaxError(_)) => Err(Error::BadRequest("request body is not valid JSON".into())),
            Err(JsonRejection::JsonDataError(e)) => Err(Error::BadRequest(format!(
                "request body does not match the patient schema: {}",
                e.body_text().trim_start_matches("Failed to deserialize the JSON body into the target type: ")
            ))),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(Error::PayloadTooLarge),
            Err(_) => Err(Error::BadRequest("request body could not be read".into())),
        }
    }
}

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

/// `Query<T>` with a 400 problem response.
pub struct AppQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for AppQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state).await.map(|Query(q)| Self(q)).map_err(|e: QueryRejection| {
            Error::BadRequest(format!(
                "invalid query string: {}",
                e.body_text().trim_start_matches("Failed to deserialize query string: ")
            ))
        })
    }
}
