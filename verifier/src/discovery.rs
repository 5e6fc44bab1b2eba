//! OIDC discovery through `openidconnect`'s provider metadata: the one place that reads the
//! realm's `/.well-known/openid-configuration`, for the key store and the service-token client.

use anyhow::{bail, Context};
use openidconnect::core::CoreProviderMetadata;

/// The realm's provider metadata, fetched from `<base>/.well-known/openid-configuration`. The
/// announced issuer must be one of `accepted` (the realm can be reached under another host name
/// than the one in its tokens, e.g. inside compose, so this is not `discover_async`'s exact-URL
/// rule).
pub async fn provider_metadata(http: &reqwest::Client, base: &str, accepted: &[String]) -> anyhow::Result<CoreProviderMetadata> {
    let url = format!("{}/.well-known/openid-configuration", base.trim_end_matches('/'));
    let response = http.get(&url).send().await.context("discovery request failed")?;
    let body =
        response.error_for_status().context("discovery request refused")?.bytes().await.context("discovery read failed")?;
    let metadata: CoreProviderMetadata = serde_json::from_slice(&body).context("discovery document is malformed")?;
    let issuer = metadata.issuer().as_str().trim_end_matches('/');
    if !accepted.iter().any(|a| a == issuer) {
        bail!("discovery announced an issuer that is not accepted");
    }
    Ok(metadata)
}
