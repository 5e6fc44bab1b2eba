//! Verified tokens, remembered so that a repeated token costs a hash and a lookup instead of an
//! RSA verification.
//!
//! - Key: SHA-256 of the whole compact token (signature included), so only the very same token
//!   hits; value: the principal it proved, the key that verified it, and its `exp`.
//! - An entry never outlives its token: it expires at `exp` (moka per-entry expiry), and a hit
//!   re-checks `exp` against the clock anyway.
//! - An entry is only good while the key that verified it is still trusted: when its `kid` leaves
//!   the JWKS, the key store drops its entries, and a hit whose key was replaced is a miss.
//! - Bounded: least recently used entries go first.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::digest;

use crate::{jwks::VerifyKey, Principal};

/// The cache key: SHA-256 of the token.
pub type TokenHash = [u8; 32];

/// What a verified token proved.
#[derive(Debug)]
pub struct CachedToken {
    /// Who the token proved.
    pub principal: Arc<Principal>,
    /// The key id and key that verified the signature.
    pub kid: String,
    pub key: Arc<VerifyKey>,
    /// `exp` of the token, seconds since the epoch.
    pub exp: u64,
}

struct UntilExp;

impl moka::Expiry<TokenHash, Arc<CachedToken>> for UntilExp {
    fn expire_after_create(&self, _: &TokenHash, value: &Arc<CachedToken>, _: Instant) -> Option<Duration> {
        Some(Duration::from_secs(value.exp.saturating_sub(now_secs())))
    }
}

/// Verified tokens; a capacity of 0 switches caching off (every token fully verified).
pub struct TokenCache {
    entries: Option<moka::sync::Cache<TokenHash, Arc<CachedToken>>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").field("enabled", &self.entries.is_some()).finish()
    }
}

impl TokenCache {
    pub fn new(capacity: u64) -> Self {
        let entries = (capacity > 0).then(|| {
            moka::sync::Cache::builder().max_capacity(capacity).expire_after(UntilExp).support_invalidation_closures().build()
        });
        Self { entries }
    }

    pub fn hash(token: &str) -> TokenHash {
        let digest = digest::digest(&digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }

    /// The cached proof of `hash`, only while the token has not expired.
    pub fn get(&self, hash: &TokenHash) -> Option<Arc<CachedToken>> {
        let entries = self.entries.as_ref()?;
        let entry = entries.get(hash)?;
        if entry.exp <= now_secs() {
            entries.invalidate(hash);
            return None;
        }
        Some(entry)
    }

    pub fn insert(&self, hash: TokenHash, token: CachedToken) {
        if let Some(entries) = &self.entries {
            if token.exp > now_secs() {
                entries.insert(hash, Arc::new(token));
            }
        }
    }

    /// Drops every token verified with the key `kid` (the realm no longer publishes it).
    pub fn forget_key(&self, kid: &str) {
        let Some(entries) = &self.entries else { return };
        let kid = kid.to_owned();
        if entries.invalidate_entries_if(move |_, v| v.kid == kid).is_err() {
            // Only possible without `support_invalidation_closures`; a stale entry would still be
            // refused on its next hit by the key identity check, so fall back to dropping all.
            entries.invalidate_all();
        }
    }

    /// Entries held (after pending evictions and invalidations ran).
    pub fn len(&self) -> u64 {
        self.entries.as_ref().map_or(0, |entries| {
            entries.run_pending_tasks();
            entries.entry_count()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}
