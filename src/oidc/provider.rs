//! The identity provider as the gateway knows it: discovery metadata and the
//! signing keys (JWKS), loaded in the background, refreshed periodically and on
//! an unknown `kid` (at most once per [`FORCED_REFRESH_INTERVAL`]).
//!
//! Discovery is read by hand rather than through a generic OIDC client: Entra's
//! multi-tenant authorities publish `https://login.microsoftonline.com/{tenantid}/v2.0`
//! as their issuer, which strict clients reject (openidconnect-rs #216).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::{is_secure_url, Settings};
use crate::health::Readiness;
use crate::metrics::IdpCall;

/// Readiness component name.
pub const READINESS: &str = "oidc";
/// Unknown `kid`s trigger a JWKS re-fetch at most this often.
pub const FORCED_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The parts of the discovery document the gateway uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
    #[serde(default)]
    pub response_modes_supported: Vec<String>,
}

impl Metadata {
    /// Entra multi-tenant authorities publish an issuer template.
    pub fn issuer_is_template(&self) -> bool {
        self.issuer.contains("{tenantid}")
    }

    /// client_secret_post when allowed (Entra's basic-auth handling of URL-encoded
    /// secrets has been inconsistent), else client_secret_basic (the OIDC default).
    pub fn prefers_client_secret_post(&self) -> bool {
        self.token_endpoint_auth_methods_supported
            .iter()
            .any(|m| m == "client_secret_post")
    }
}

/// A loaded provider: metadata and keys.
#[derive(Debug)]
pub struct Loaded {
    pub metadata: Metadata,
    pub jwks: JwkSet,
    /// Entra's per-key `issuer` (kid → issuer, possibly the `{tenantid}`
    /// template), where the JWKS publishes one: a token signed with that key
    /// must carry that issuer (Microsoft's multi-tenant validation recipe).
    pub key_issuers: HashMap<String, String>,
}

impl Loaded {
    /// The issuer the JWKS names for key `kid`, if any.
    pub fn key_issuer(&self, kid: Option<&str>) -> Option<&str> {
        self.key_issuers.get(kid?).map(String::as_str)
    }
}

/// kid → `issuer` of the JWKS keys that carry both (jsonwebtoken's `Jwk` drops
/// fields it does not know, so they are read from the document itself).
fn key_issuers(jwks: &serde_json::Value) -> HashMap<String, String> {
    let keys = jwks.get("keys").and_then(|k| k.as_array());
    keys.into_iter()
        .flatten()
        .filter_map(|key| {
            let kid = key.get("kid")?.as_str()?;
            let issuer = key.get("issuer")?.as_str()?;
            Some((kid.to_string(), issuer.to_string()))
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot fetch {what} from {url}: {reason}")]
    Fetch {
        what: &'static str,
        url: String,
        reason: String,
    },
    #[error("{what} at {url} is not valid: {reason}")]
    Invalid {
        what: &'static str,
        url: String,
        reason: String,
    },
    #[error("the discovery document's issuer {found:?} does not match oidc.issuer {expected:?}; copy the issuer exactly as Azure shows it")]
    IssuerMismatch { found: String, expected: String },
    #[error("{0}")]
    Insecure(String),
}

pub struct Provider {
    http: reqwest::Client,
    configured_issuer: String,
    /// `oidc.discovery_url`, else `<issuer>/.well-known/openid-configuration`.
    discovery_url: String,
    loaded: ArcSwapOption<Loaded>,
    /// Serialises forced JWKS refreshes and remembers when the last one ran.
    forced_refresh: Mutex<Option<Instant>>,
    readiness: Readiness,
    refresh_every: Duration,
}

impl Provider {
    pub fn new(settings: &Settings, http: reqwest::Client, readiness: Readiness) -> Self {
        readiness.set_not_ready(READINESS, "identity provider metadata not loaded yet");
        let oidc = &settings.config.oidc;
        let configured_issuer = oidc.issuer.trim().trim_end_matches('/').to_string();
        let discovery_url = oidc
            .discovery_url
            .clone()
            .unwrap_or_else(|| format!("{configured_issuer}/.well-known/openid-configuration"));
        Provider {
            http,
            configured_issuer,
            discovery_url,
            loaded: ArcSwapOption::empty(),
            forced_refresh: Mutex::new(None),
            readiness,
            refresh_every: settings.config.oidc.metadata_refresh,
        }
    }

    pub fn discovery_url(&self) -> String {
        self.discovery_url.clone()
    }

    /// Metadata and keys, once loaded.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.loaded.load_full()
    }

    /// Fetches discovery and JWKS; on success they replace the current ones.
    pub async fn load(&self) -> Result<Arc<Loaded>, ProviderError> {
        let url = self.discovery_url();
        let metadata: Metadata = self
            .get_json("discovery document", IdpCall::Discovery, &url)
            .await?;
        self.check_metadata(&metadata)?;
        let document: serde_json::Value = self
            .get_json("JWKS", IdpCall::Jwks, &metadata.jwks_uri)
            .await?;
        let jwks: JwkSet =
            serde_json::from_value(document.clone()).map_err(|e| ProviderError::Invalid {
                what: "JWKS",
                url: metadata.jwks_uri.clone(),
                reason: e.to_string(),
            })?;
        let loaded = Arc::new(Loaded {
            metadata,
            key_issuers: key_issuers(&document),
            jwks,
        });
        self.loaded.store(Some(loaded.clone()));
        self.readiness.set_ready(READINESS);
        Ok(loaded)
    }

    fn check_metadata(&self, metadata: &Metadata) -> Result<(), ProviderError> {
        let found = metadata.issuer.trim_end_matches('/');
        let template_ok = metadata.issuer_is_template()
            && ["/common/v2.0", "/organizations/v2.0", "/consumers/v2.0"]
                .iter()
                .any(|suffix| self.configured_issuer.ends_with(suffix));
        if found != self.configured_issuer && !template_ok {
            return Err(ProviderError::IssuerMismatch {
                found: metadata.issuer.clone(),
                expected: self.configured_issuer.clone(),
            });
        }
        for (name, url) in [
            ("authorization_endpoint", &metadata.authorization_endpoint),
            ("token_endpoint", &metadata.token_endpoint),
            ("jwks_uri", &metadata.jwks_uri),
        ] {
            if !is_secure_url(url) {
                return Err(ProviderError::Insecure(format!(
                    "the discovery document's {name} {url:?} is not https:// (http:// only on loopback)"
                )));
            }
        }
        Ok(())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        call: IdpCall,
        url: &str,
    ) -> Result<T, ProviderError> {
        let started = Instant::now();
        let result = self.fetch_json(what, url).await;
        crate::metrics::idp_call(call, started.elapsed());
        result
    }

    async fn fetch_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        url: &str,
    ) -> Result<T, ProviderError> {
        let fetch = |reason: String| ProviderError::Fetch {
            what,
            url: url.to_string(),
            reason,
        };
        let response = self
            .http
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| fetch(crate::errors::error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(fetch(format!("HTTP {status}")));
        }
        response.json().await.map_err(|e| ProviderError::Invalid {
            what,
            url: url.to_string(),
            reason: crate::errors::error_chain(&e),
        })
    }

    /// The key for `kid`. An unknown kid means the IdP rotated its keys: re-fetch
    /// the JWKS once (rate-limited, concurrent misses share one fetch) and look again.
    pub async fn key(&self, kid: Option<&str>) -> Option<Jwk> {
        if let Some(jwk) = self.current().and_then(|l| find_key(&l.jwks, kid)) {
            return Some(jwk);
        }
        let mut last = self.forced_refresh.lock().await;
        // Someone else may have refreshed while we waited for the lock.
        if let Some(jwk) = self.current().and_then(|l| find_key(&l.jwks, kid)) {
            return Some(jwk);
        }
        if last.is_some_and(|at| at.elapsed() < FORCED_REFRESH_INTERVAL) {
            return None;
        }
        *last = Some(Instant::now());
        tracing::info!(kid = ?kid, "unknown signing key: re-reading the identity provider's keys");
        match self.load().await {
            Ok(loaded) => find_key(&loaded.jwks, kid),
            Err(e) => {
                tracing::warn!(error = %e, "re-reading the identity provider's keys failed");
                None
            }
        }
    }

    /// Loads now and keeps refreshing until `stop`: retries with backoff while
    /// nothing could be loaded (`/readyz` says why), then every `metadata_refresh`.
    pub fn spawn_refresher(self: &Arc<Self>, stop: CancellationToken) {
        let provider = self.clone();
        tokio::spawn(async move {
            let mut retry = FIRST_RETRY;
            loop {
                let wait = match provider.load().await {
                    Ok(_) => {
                        retry = FIRST_RETRY;
                        provider.refresh_every
                    }
                    Err(e) => {
                        if provider.current().is_none() {
                            provider.readiness.set_not_ready(
                                READINESS,
                                format!("identity provider not loaded: {e}"),
                            );
                        }
                        tracing::warn!(error = %e, retry_in_ms = retry.as_millis() as u64, "identity provider metadata refresh failed");
                        let wait = retry;
                        retry = (retry * 2).min(MAX_RETRY);
                        wait
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return,
                }
            }
        });
    }
}

fn find_key(jwks: &JwkSet, kid: Option<&str>) -> Option<Jwk> {
    match kid {
        Some(kid) => jwks.find(kid).cloned(),
        // No kid in the token: acceptable only when there is exactly one key.
        None if jwks.keys.len() == 1 => jwks.keys.first().cloned(),
        None => None,
    }
}
