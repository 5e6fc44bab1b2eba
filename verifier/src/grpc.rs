//! The verifier in front of a tonic service: a tower layer (tonic's own interceptors are
//! synchronous, and a token with a new `kid` needs an awaited key fetch). Wrap only the
//! services that need a caller; gRPC health and reflection stay open (SPEC §10).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{server::NamedService, Status};
use tower::{Layer, Service};

use crate::{web::Caller, AuthError, Verifier};

/// Roles a gRPC method (`/package.Service/Method`) requires; `None`: no such method is allowed.
pub type MethodRoles = fn(&str) -> Option<&'static [&'static str]>;

/// Wraps a tonic service so every call carries a valid bearer token with the method's roles.
#[derive(Clone)]
pub struct RequireCallerLayer {
    verifier: Arc<Verifier>,
    roles: MethodRoles,
}

impl RequireCallerLayer {
    pub fn new(verifier: Arc<Verifier>, roles: MethodRoles) -> Self {
        Self { verifier, roles }
    }
}

impl<S> Layer<S> for RequireCallerLayer {
    type Service = RequireCaller<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireCaller { inner, verifier: self.verifier.clone(), roles: self.roles }
    }
}

#[derive(Clone)]
pub struct RequireCaller<S> {
    inner: S,
    verifier: Arc<Verifier>,
    roles: MethodRoles,
}

impl<S: NamedService> NamedService for RequireCaller<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for RequireCaller<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (verifier, roles) = (self.verifier.clone(), self.roles);
        Box::pin(async move {
            // Only the head is looked at (the body is not `Sync` and need not be).
            let (mut head, body) = req.into_parts();
            match check(&verifier, roles, &head).await {
                Ok(caller) => {
                    head.extensions.insert(caller);
                    inner.call(http::Request::from_parts(head, body)).await
                }
                Err(status) => {
                    tracing::info!(code = ?status.code(), outcome = status.message(), "call refused");
                    Ok(status.into_http())
                }
            }
        })
    }
}

async fn check(verifier: &Verifier, roles: MethodRoles, head: &http::request::Parts) -> Result<Caller, Status> {
    let required = roles(head.uri.path()).ok_or_else(|| Status::unimplemented("unknown method"))?;
    let principal = verifier.verify_headers(&head.headers).await.map_err(|e| match e {
        AuthError::InvalidRequest(_) => Status::invalid_argument(e.to_string()),
        AuthError::KeysUnavailable => Status::unavailable(e.to_string()),
        _ => Status::unauthenticated(e.to_string()),
    })?;
    let missing: Vec<&str> = required.iter().copied().filter(|r| !principal.roles.contains(*r)).collect();
    if !missing.is_empty() {
        return Err(Status::permission_denied(format!("the access token lacks the role(s) {}", missing.join(" "))));
    }
    Ok(Caller(principal))
}
