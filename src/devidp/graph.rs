//! Microsoft Graph as far as the gateway uses it, and Entra's group overage.
//!
//! - A user in more than [`OVERAGE_LIMIT`] groups gets no `groups` claim but
//!   `_claim_names`/`_claim_sources` (Entra's overage marker). The claim
//!   source's endpoint is served here only to count calls: a client must
//!   never call it ([`DevIdp::claim_source_requests`]).
//! - `POST /v1.0/me/getMemberObjects` checks the bearer access token (issued
//!   by this IdP, unexpired, with `User.Read` in `scp`) and answers the
//!   user's groups in pages of [`PAGE_SIZE`] linked by `@odata.nextLink`.
//!   [`GraphMode`] makes it fail.
//!
//! [`DevIdp::claim_source_requests`]: super::DevIdp::claim_source_requests

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::header::AUTHORIZATION;
use http::{HeaderMap, Response, StatusCode};
use ring::digest::{digest, SHA256};
use serde_json::{json, Map, Value};

use super::web::json;
use super::{lock, Shared};
use crate::Body;

/// Entra's limit of groups in a JWT; beyond it, the overage marker.
pub const OVERAGE_LIMIT: usize = 200;
/// Object ids per `getMemberObjects` page.
const PAGE_SIZE: usize = 100;
/// Path prefix of the claim source endpoint named in overage tokens.
const CLAIM_SOURCE_PREFIX: &str = "/claim_sources/";
/// The Graph action.
const MEMBER_OBJECTS_PATH: &str = "/v1.0/me/getMemberObjects";
/// Delegated permissions that allow reading the signed-in user's memberships.
const MEMBERSHIP_SCOPES: [&str; 3] = ["User.Read", "GroupMember.Read.All", "Directory.Read.All"];

/// How the Graph endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GraphMode {
    /// As Graph does.
    #[default]
    Normal,
    /// This status with a Graph-shaped error (403: `Authorization_RequestDenied`,
    /// as when the permission was not consented).
    Status(u16),
    /// Never answers (the request is held until the IdP stops).
    Hang,
}

/// What an access token the IdP issued grants.
struct AccessGrant {
    oid: String,
    scopes: Vec<String>,
    expires: Instant,
}

/// The directory: each user's groups and the access tokens issued.
#[derive(Default)]
pub(super) struct Directory {
    groups: HashMap<String, Vec<String>>,
    tokens: HashMap<Vec<u8>, AccessGrant>,
}

impl Directory {
    /// Records the groups of the user with object id `oid`.
    pub(super) fn set_groups(&mut self, oid: String, groups: Vec<String>) {
        self.groups.insert(oid, groups);
    }

    /// Records an access token (by its hash) for Graph's check.
    pub(super) fn issued(&mut self, token: &str, oid: String, scope: &str, lifetime: Duration) {
        let now = Instant::now();
        self.tokens.retain(|_, grant| grant.expires > now);
        self.tokens.insert(
            hash(token),
            AccessGrant {
                oid,
                scopes: scope.split_whitespace().map(str::to_string).collect(),
                expires: now + lifetime,
            },
        );
    }
}

fn hash(token: &str) -> Vec<u8> {
    digest(&SHA256, token.as_bytes()).as_ref().to_vec()
}

/// `count` group ids, as a user in many groups has (`…-000000000001`, …).
pub fn generated_groups(count: usize) -> Vec<String> {
    (1..=count)
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect()
}

/// The overage marker in place of a `groups` claim with more than
/// [`OVERAGE_LIMIT`] entries (Entra's shape; the endpoint is this IdP's
/// stand-in for the retired AAD Graph URL Entra puts there).
pub(super) fn apply_overage(shared: &Shared, claims: &mut Map<String, Value>, oid: &str) {
    let over = claims
        .get("groups")
        .and_then(Value::as_array)
        .is_some_and(|groups| groups.len() > OVERAGE_LIMIT);
    if !over {
        return;
    }
    claims.remove("groups");
    claims.insert("_claim_names".into(), json!({"groups": "src1"}));
    claims.insert(
        "_claim_sources".into(),
        json!({"src1": {"endpoint": format!(
            "{}{CLAIM_SOURCE_PREFIX}{}/users/{oid}/getMemberObjects",
            shared.base_url, shared.options.tenant_id
        )}}),
    );
}

/// Whether `path` is one of the Graph stand-in's.
pub(super) fn serves(path: &str) -> bool {
    path == MEMBER_OBJECTS_PATH || path.starts_with(CLAIM_SOURCE_PREFIX)
}

/// Answers a Graph (or claim source) request.
pub(super) async fn handle(
    shared: &Shared,
    path: &str,
    query: &str,
    post: bool,
    headers: &HeaderMap,
) -> Response<Body> {
    if path.starts_with(CLAIM_SOURCE_PREFIX) {
        shared.claim_source_requests.fetch_add(1, Ordering::SeqCst);
        return graph_error(
            StatusCode::GONE,
            "Request_BadRequest",
            "The claim source endpoint must not be called: read the groups from Microsoft Graph.",
        );
    }
    shared.graph_requests.fetch_add(1, Ordering::SeqCst);
    let mode = lock(&shared.knobs).graph_mode;
    match mode {
        GraphMode::Normal => {}
        GraphMode::Status(403) => {
            return graph_error(
                StatusCode::FORBIDDEN,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            )
        }
        GraphMode::Status(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return graph_error(status, "serviceNotAvailable", "The service is unavailable.");
        }
        GraphMode::Hang => {
            shared.stop.cancelled().await;
            return graph_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "serviceNotAvailable",
                "The development IdP is shutting down.",
            );
        }
    }
    if !post {
        return graph_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Request_BadRequest",
            "getMemberObjects is an action: use POST.",
        );
    }
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let directory = lock(&shared.directory);
    let Some(grant) = directory
        .tokens
        .get(&hash(token))
        .filter(|g| g.expires > Instant::now())
    else {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token is empty, expired or not issued by this IdP.",
        );
    };
    if !grant
        .scopes
        .iter()
        .any(|s| MEMBERSHIP_SCOPES.contains(&s.as_str()))
    {
        return graph_error(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        );
    }
    let groups = directory
        .groups
        .get(&grant.oid)
        .cloned()
        .unwrap_or_default();
    let skip: usize = query
        .strip_prefix("$skiptoken=")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let page: Vec<&String> = groups.iter().skip(skip).take(PAGE_SIZE).collect();
    let mut body = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(Edm.String)",
        "value": page,
    });
    if skip + PAGE_SIZE < groups.len() {
        body["@odata.nextLink"] = json!(format!(
            "{}{MEMBER_OBJECTS_PATH}?$skiptoken={}",
            shared.base_url,
            skip + PAGE_SIZE
        ));
    }
    json(StatusCode::OK, &body)
}

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        &json!({"error": {"code": code, "message": message,
            "innerError": {"request-id": super::web::random_uuid()}}}),
    )
}
