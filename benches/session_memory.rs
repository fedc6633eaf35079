//! Memory per session: RSS growth after creating 100,000 sessions with
//! Entra-shaped identities, first without tokens, then with typical token sizes.
//! Run: `cargo bench --bench session_memory` (prints a small table and JSON).

use std::sync::Arc;

use oidc_gateway::identity::Identity;
use oidc_gateway::session::cookies::CookieCodec;
use oidc_gateway::session::{unix_now, MemoryStore, SessionHandle, SessionRecord, SessionStore};

const SESSIONS: usize = 100_000;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn identity(i: usize) -> Identity {
    let user = format!("user{i:06}@contoso.onmicrosoft.com");
    Identity {
        user: user.clone(),
        subject: format!("{:043}", i),
        email: None,
        preferred_username: Some(user),
        name: Some(format!("User Number {i}")),
        oid: Some(format!("00000000-0000-4000-8000-{i:012}")),
        tid: Some("11111111-2222-3333-4444-555555555555".into()),
        groups: vec!["0b5e7a3c-9d1f-4e2a-8b6c-5d4e3f2a1b0c".into()],
        roles: Vec::new(),
        groups_overage: false,
        issuer: "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"
            .into(),
        upn: None,
        email_domain_verified: false,
        idp: None,
        header_values: Default::default(),
    }
}

async fn fill(store: &MemoryStore, with_tokens: bool) -> u64 {
    let before = rss_bytes();
    let now = unix_now();
    for i in 0..SESSIONS {
        let (id, _) = CookieCodec::new_session_id();
        let mut session = SessionRecord::new(identity(i), 12 * 3600, now);
        if with_tokens {
            // Typical Entra sizes: ID token ~1.5 KiB, access token ~2 KiB (kept only
            // with headers.pass_access_token; refresh tokens are never kept).
            session.id_token = Some("i".repeat(1500).into());
            session.access_token = Some("a".repeat(2000).into());
        }
        store
            .insert(SessionHandle::new(id.as_bytes()), session)
            .await
            .unwrap();
    }
    rss_bytes().saturating_sub(before)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let bare = Arc::new(MemoryStore::new());
    let grown_bare = fill(&bare, false).await;
    let tokens = Arc::new(MemoryStore::new());
    let grown_tokens = fill(&tokens, true).await;
    let per_bare = grown_bare as f64 / SESSIONS as f64;
    let per_tokens = grown_tokens as f64 / SESSIONS as f64;
    println!("sessions                 {SESSIONS}");
    println!("bytes/session (identity) {per_bare:.0}");
    println!("bytes/session (+tokens)  {per_tokens:.0}");
    println!(
        "{}",
        serde_json::json!({
            "sessions": SESSIONS,
            "bytes_per_session_identity_only": per_bare.round(),
            "bytes_per_session_with_tokens": per_tokens.round(),
            "store_len": bare.len() + tokens.len(),
        })
    );
}
