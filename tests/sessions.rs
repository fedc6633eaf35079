//! Sessions that outlive a process: the store conformance suite on Redis, the
//! memory store's state file across a real restart (SIGTERM), two gateway
//! processes sharing one real `redis-server` (sign-in on one, use and sign-out
//! on the other, Redis stopped and restarted, start-up without Redis), Redis
//! behind Sentinel across a failover, and front-channel logout by Entra's
//! `sid` on both stores.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{free_port, info_field, GatewayProcess, RedisServer};
use common::{config_text, echo_upstream, echoed, follow_login, gateway, idp_options, Extra, USER};
use oidc_gateway::config;
use oidc_gateway::devidp::DevIdp;
use oidc_gateway::session::redis::RedisStore;
use oidc_gateway::session::store::conformance;
use oidc_gateway::session::{SessionHandle, SessionRecord, SessionStore};
use tempfile::TempDir;

/// base64 of 32 bytes: the replicas' shared session.secret.
const SECRET: &str = "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";

/// Waiting on other processes (a replica's cache, Redis coming back) is bounded by this.
const PATIENCE: Duration = Duration::from_secs(15);

fn store_settings(redis: &RedisServer, extra_session: &str) -> config::Settings {
    let dir = TempDir::new().unwrap();
    let extra = Extra {
        session: format!(
            "store = \"redis\"\nredis_url = \"{}\"\nredis_prefix = \"t:\"\n{extra_session}",
            redis.url()
        ),
        ..Default::default()
    };
    let text = config_text(
        &dir,
        "http://127.0.0.1:9",
        "http://127.0.0.1:9/t/v2.0",
        &extra,
    );
    config::load_str(&text, &[]).expect("valid config")
}

#[tokio::test]
async fn redis_store_passes_the_conformance_suite() {
    let Some(redis) = RedisServer::start("redis_store_passes_the_conformance_suite").await else {
        return;
    };
    let settings = store_settings(&redis, "");
    let store = RedisStore::start(&settings, Default::default()).expect("store");
    conformance::run(&store).await;
}

#[tokio::test]
async fn redis_records_are_sealed_under_a_hash_of_the_cookie_and_expire() {
    let Some(redis) = RedisServer::start("redis_records_are_sealed").await else {
        return;
    };
    let settings = store_settings(&redis, "idle_timeout = \"30m\"");
    let store = RedisStore::start(&settings, Default::default()).expect("store");
    let id = "s".repeat(43);
    let handle = SessionHandle::new(id.as_bytes());
    let mut record = SessionRecord::new(
        oidc_gateway::identity::Identity::example("mallory-secret-name"),
        12 * 3600,
        oidc_gateway::session::unix_now(),
    );
    record.access_token = Some("access-token-value".into());
    store.insert(handle, record).await.expect("insert");

    let mut redis_conn = redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut redis_conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let hex: String = handle.key.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        keys[0],
        format!("t:session:{hex}"),
        "keyed by SHA-256 of the id"
    );
    assert!(!keys[0].contains(&id));
    let value: Vec<u8> = redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut redis_conn)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&value);
    assert!(
        !text.contains("mallory") && !text.contains("access-token"),
        "the record is sealed: {text}"
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg(&keys[0])
        .query_async(&mut redis_conn)
        .await
        .unwrap();
    assert!(
        (1..=1800).contains(&ttl),
        "the TTL is the idle timeout (30 min), not the 12 h lifetime: {ttl}"
    );

    // A cookie that hashes elsewhere finds nothing; a record moved under
    // another cookie's key does not open with that cookie.
    let other = "o".repeat(43);
    let other_handle = SessionHandle::new(other.as_bytes());
    let other_hex: String = other_handle
        .key
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let () = redis::cmd("SET")
        .arg(format!("t:session:{other_hex}"))
        .arg(&value)
        .query_async(&mut redis_conn)
        .await
        .unwrap();
    assert!(
        store.get(other_handle).await.expect("get").is_none(),
        "a record opens only with the cookie it was sealed for"
    );
}

// ------------------------------------------------------------------ replicas

/// The IdP, the upstream and the certificate the gateway processes share.
struct Site {
    idp: DevIdp,
    upstream: SocketAddr,
    /// The gateways' certificate (written by the first one, reused by the others).
    certs: TempDir,
}

impl Site {
    async fn new() -> Site {
        Site::with_groups(idp_options().groups).await
    }

    /// A site whose IdP puts the user in `groups`.
    async fn with_groups(groups: Vec<String>) -> Site {
        let mut options = idp_options();
        options.sid_claim = true;
        options.groups = groups;
        let idp = DevIdp::start(options).await.expect("IdP starts");
        Site {
            idp,
            upstream: echo_upstream().await,
            certs: TempDir::new().unwrap(),
        }
    }

    /// Config for a replica listening on `port`, with `session` lines.
    fn config(&self, port: u16, session: &str) -> String {
        let extra = Extra {
            session: format!("secret = \"{SECRET}\"\n{session}"),
            oidc: format!("graph_url = \"{}\"", self.idp.graph_url()),
            ..Default::default()
        };
        config_text(
            &self.certs,
            &format!("http://{}", self.upstream),
            &self.idp.issuer(),
            &extra,
        )
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
    }

    /// A browser (own cookie jar) trusting the replicas' certificate.
    fn browser(&self) -> Browser {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let cert = std::fs::read(self.certs.path().join("gateway.crt")).expect("certificate");
        let client = common::client_builder(&cert, SocketAddr::from(([127, 0, 0, 1], 0)))
            .cookie_provider(jar.clone())
            .build()
            .expect("client");
        Browser { client, jar }
    }
}

/// One gateway process.
struct Replica {
    process: GatewayProcess,
    port: u16,
    _dir: TempDir,
}

impl Replica {
    /// Starts a replica with `session` lines and waits until it listens.
    async fn start(site: &Site, session: &str) -> Replica {
        let dir = TempDir::new().unwrap();
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut process = GatewayProcess::spawn(dir.path(), addr, &site.config(port, session));
        process.wait_listening().await;
        Replica {
            process,
            port,
            _dir: dir,
        }
    }

    /// A replica in `dir` (kept across restarts), waiting until it is ready.
    async fn start_in(site: &Site, dir: TempDir, port: u16, session: &str) -> Replica {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut process = GatewayProcess::spawn(dir.path(), addr, &site.config(port, session));
        process.wait_listening().await;
        let replica = Replica {
            process,
            port,
            _dir: dir,
        };
        replica.wait_ready(&site.browser()).await;
        replica
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    async fn readyz(&self, browser: &Browser) -> (u16, String) {
        let response = browser
            .client
            .get(self.url("/readyz"))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn wait_ready(&self, browser: &Browser) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, body) = self.readyz(browser).await;
            if status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica not ready: {body}\n{}",
                self.process.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `/readyz`, always 503, until its body `says` what it must name
    /// (`what`); returns that body.
    async fn wait_not_ready_saying(
        &self,
        browser: &Browser,
        what: &str,
        says: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, body) = self.readyz(browser).await;
            assert_eq!(status, 503, "must not be ready: {body}");
            if says(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "readiness must name {what}: {body}\n{}",
                self.process.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct Browser {
    client: reqwest::Client,
    jar: Arc<reqwest::cookie::Jar>,
}

impl Browser {
    async fn sign_in(&self, replica: &Replica) {
        let start = self
            .client
            .get(replica.url("/.gateway/sign_in?rd=%2F"))
            .send()
            .await
            .expect("sign_in");
        let response = follow_login(&self.client, start).await;
        assert_eq!(response.status(), 303, "sign-in through the replica");
    }

    /// `GET path` as an API client: 200 with the echo, or the gateway's answer.
    async fn get(&self, replica: &Replica, path: &str) -> reqwest::Response {
        self.client
            .get(replica.url(path))
            .send()
            .await
            .expect("request")
    }

    /// The session cookie pair, to replay it after the jar forgot it.
    fn session_cookie(&self, replica: &Replica) -> String {
        use reqwest::cookie::CookieStore;
        let url: reqwest::Url = replica.url("/").parse().unwrap();
        self.jar
            .cookies(&url)
            .and_then(|v| {
                v.to_str()
                    .unwrap()
                    .split("; ")
                    .find(|p| p.starts_with("__Host-oidc-gateway="))
                    .map(str::to_string)
            })
            .expect("signed in")
    }
}

/// Asserts a 200 from the echo upstream as `USER`.
async fn assert_signed_in(response: reqwest::Response, what: &str) {
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{what}: {body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed(&echo, "x-forwarded-user"), vec![USER], "{what}");
}

/// Asserts the answer of the gateway for a session it no longer knows (API client).
async fn assert_signed_out(response: reqwest::Response, what: &str) {
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 401, "{what}: {body}");
    assert!(body.contains("\"unauthenticated\""), "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_sessions_survive_a_restart_and_a_corrupt_state_file_means_a_clean_start() {
    let site = Site::new().await;
    let dir = TempDir::new().unwrap();
    let work = dir.path().to_path_buf();
    let port = free_port();
    let mut replica = Replica::start_in(&site, dir, port, "").await;
    let browser = site.browser();
    browser.sign_in(&replica).await;
    assert_signed_in(browser.get(&replica, "/before").await, "before the restart").await;
    let token_requests = site.idp.token_requests();

    let status = replica.process.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", replica.process.logs());
    let state = work.join("sessions.state");
    let mode = std::fs::metadata(&state)
        .unwrap_or_else(|e| panic!("state file written: {e}\n{}", replica.process.logs()))
        .permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.mode() & 0o777, 0o600, "the state file is private");
    assert!(
        !String::from_utf8_lossy(&std::fs::read(&state).unwrap()).contains("alice"),
        "the state file is encrypted"
    );

    // The same process directory, the same cookie: still signed in.
    let dir = replica._dir;
    drop(replica.process);
    let mut replica = Replica::start_in(&site, dir, port, "").await;
    assert_signed_in(browser.get(&replica, "/after").await, "after the restart").await;
    assert_eq!(
        site.idp.token_requests(),
        token_requests,
        "no new sign-in happened"
    );

    // A corrupt state file: a warning and a clean start, not a failed one.
    assert_eq!(replica.process.terminate().await.code(), Some(0));
    std::fs::write(&state, b"not a state file").unwrap();
    let dir = replica._dir;
    drop(replica.process);
    let replica = Replica::start_in(&site, dir, port, "").await;
    assert_signed_out(
        browser.get(&replica, "/corrupt").await,
        "corrupt state file",
    )
    .await;
    let logs = replica.process.logs();
    assert!(
        logs.contains("not one the gateway wrote"),
        "the corrupt file is named in a warning:\n{logs}"
    );
}

fn redis_session(redis: &RedisServer, cache_ttl: &str) -> String {
    format!(
        "store = \"redis\"\nredis_url = \"{}\"\ncache_ttl = \"{cache_ttl}\"",
        redis.url()
    )
}

/// Two replicas A and B sharing `redis`, both ready, and a browser for them.
async fn two_replicas(
    site: &Site,
    redis: &RedisServer,
    cache_ttl: &str,
) -> (Replica, Replica, Browser) {
    let session = redis_session(redis, cache_ttl);
    let a = Replica::start(site, &session).await;
    let b = Replica::start(site, &session).await;
    let browser = site.browser();
    a.wait_ready(&browser).await;
    b.wait_ready(&browser).await;
    (a, b, browser)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_groups_of_an_overage_user_are_kept_in_redis_for_every_replica() {
    let Some(redis) = RedisServer::start("graph_groups_in_redis").await else {
        return;
    };
    let groups = oidc_gateway::devidp::generated_groups(250);
    let site = Site::with_groups(groups.clone()).await;
    let (a, b, browser) = two_replicas(&site, &redis, "1s").await;
    browser.sign_in(&a).await;
    let on_b = browser.get(&b, "/on-b").await;
    assert_eq!(on_b.status(), 200);
    let echo: serde_json::Value = on_b.json().await.unwrap();
    assert_eq!(
        echoed(&echo, "x-forwarded-groups"),
        vec![groups.join(",").as_str()],
        "replica B sends the groups A read from Graph"
    );
    assert_eq!(
        site.idp.graph_requests(),
        3,
        "read once, at sign-in (three pages)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_sessions_through_redis_and_a_sign_out_reaches_both() {
    let Some(redis) = RedisServer::start("two_gateways_share_sessions").await else {
        return;
    };
    let site = Site::new().await;
    let (a, b, browser) = two_replicas(&site, &redis, "2s").await;

    browser.sign_in(&a).await;
    assert_signed_in(browser.get(&a, "/on-a").await, "signed in on A").await;
    assert_signed_in(browser.get(&b, "/on-b").await, "the same cookie on B").await;

    // Sign out on B; the old cookie (replayed) is refused on A within cache_ttl.
    let cookie = browser.session_cookie(&a);
    let out = browser
        .client
        .get(b.url("/.gateway/sign_out"))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 302, "sign-out on B");
    let replay = site.browser();
    let signed_out = Instant::now();
    loop {
        let response = replay
            .client
            .get(a.url("/after-sign-out"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        if response.status() == 401 {
            break;
        }
        assert_eq!(response.status(), 200, "served from A's cache meanwhile");
        assert!(
            signed_out.elapsed() < Duration::from_secs(2 + 3),
            "A must refuse within cache_ttl (2s) of the sign-out on B"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_serves_cached_sessions_answers_503_to_others_and_recovers() {
    let Some(mut redis) = RedisServer::start("redis_down").await else {
        return;
    };
    let site = Site::new().await;
    let (a, b, cached) = two_replicas(&site, &redis, "1s").await;
    cached.sign_in(&a).await;
    assert_signed_in(cached.get(&a, "/").await, "cached on A").await;
    let other = site.browser();
    other.sign_in(&b).await;
    let token_requests = site.idp.token_requests();

    redis.stop();
    // A session A has seen goes on, even once its cache_ttl (1s) has passed:
    // this waits for that time to pass, it synchronizes nothing.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_signed_in(
        cached.get(&a, "/while-down").await,
        "cached session, Redis down",
    )
    .await;
    // A session A has never seen cannot be checked: 503 with the reason, no cookie cleared.
    let response = other.get(&a, "/while-down").await;
    assert_eq!(response.status(), 503);
    assert!(
        response.headers().get("set-cookie").is_none(),
        "no cookie is cleared"
    );
    let body = response.text().await.unwrap();
    assert!(body.contains("session_store_unavailable"), "{body}");
    // A browser navigation without a session is not sent to the IdP either.
    let navigation = common::navigate(site.browser().client.get(a.url("/new")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        navigation.status(),
        503,
        "no login redirect while sessions cannot be saved"
    );
    let (status, readyz) = a.readyz(&cached).await;
    assert_eq!(status, 503, "{readyz}");
    assert!(
        readyz.contains("session_store") && readyz.contains("Redis"),
        "{readyz}"
    );

    redis.resume().await;
    a.wait_ready(&cached).await;
    b.wait_ready(&cached).await;
    assert_signed_in(
        other.get(&a, "/back").await,
        "Redis back: the other session on A",
    )
    .await;
    assert_signed_in(
        cached.get(&b, "/back").await,
        "Redis back: the cached one on B",
    )
    .await;
    assert_eq!(
        site.idp.token_requests(),
        token_requests,
        "nobody signed in again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_starts_without_redis_not_ready_and_becomes_ready_when_it_appears() {
    let Some(mut redis) = RedisServer::start("start_without_redis").await else {
        return;
    };
    redis.stop();
    let site = Site::new().await;
    let a = Replica::start(&site, &redis_session(&redis, "1s")).await;
    let browser = site.browser();
    let (status, body) = a.readyz(&browser).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("session_store"), "{body}");
    let healthz = browser.client.get(a.url("/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200, "alive while not ready");

    redis.resume().await;
    a.wait_ready(&browser).await;
    browser.sign_in(&a).await;
    assert_signed_in(browser.get(&a, "/").await, "signed in once Redis is there").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_shares_sessions_and_an_untrusted_certificate_is_not_ready() {
    let Some(redis) = RedisServer::start_tls("rediss_with_a_private_ca").await else {
        return;
    };
    let site = Site::new().await;
    let trusted = format!(
        "{}\nredis_ca_file = \"{}\"",
        redis_session(&redis, "1s"),
        redis.ca_file().display()
    );
    let a = Replica::start(&site, &trusted).await;
    let b = Replica::start(&site, &trusted).await;
    let browser = site.browser();
    a.wait_ready(&browser).await;
    b.wait_ready(&browser).await;
    browser.sign_in(&a).await;
    assert_signed_in(
        browser.get(&b, "/on-b").await,
        "B reads the session A wrote over TLS",
    )
    .await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*session:*")
        .query_async(&mut redis.connection().await)
        .await
        .unwrap();
    assert_eq!(
        keys.len(),
        1,
        "one session record in the TLS Redis: {keys:?}"
    );

    // Without redis_ca_file the system's roots are used: they do not know the
    // private CA, so the replica stays not ready and says why.
    let untrusted = Replica::start(&site, &redis_session(&redis, "1s")).await;
    untrusted
        .wait_not_ready_saying(&browser, "the certificate problem", |body| {
            body.to_ascii_lowercase().contains("certificate")
        })
        .await;
}

// ------------------------------------------------------------- Redis Sentinel

/// A primary, its replica in sync, and a Sentinel that knows both.
struct SentinelSetup {
    primary: RedisServer,
    replica: RedisServer,
    sentinel: RedisServer,
}

impl SentinelSetup {
    async fn start(test: &str) -> Option<SentinelSetup> {
        let primary = RedisServer::start(test).await?;
        let replica = RedisServer::start_replica(test, &primary).await?;
        let sentinel = RedisServer::start_sentinel(test, &primary, &[&replica]).await?;
        Some(SentinelSetup {
            primary,
            replica,
            sentinel,
        })
    }

    /// A gateway behind the Sentinel (cache_ttl 0s: every request asks
    /// Redis), ready, and a browser signed in through it.
    async fn signed_in_gateway(&self, site: &Site) -> (Replica, Browser) {
        let gateway = Replica::start(site, &sentinel_session(&self.sentinel, "0s")).await;
        let first = site.browser();
        gateway.wait_ready(&first).await;
        first.sign_in(&gateway).await;
        assert_signed_in(first.get(&gateway, "/before").await, "signed in").await;
        (gateway, first)
    }

    /// Waits (up to `deadline`: Sentinel's own timing) until the Sentinel
    /// names `new` as the primary and `new` acts as one.
    async fn wait_for_promotion(&self, new: &RedisServer, deadline: Duration) {
        let port = new.port;
        self.sentinel
            .poll_within(
                "Sentinel names the new primary",
                deadline,
                async |sentinel| sentinel.primary_port().await == Some(port),
            )
            .await;
        new.poll_within("the new primary acts as one", deadline, async |new| {
            new.info_field("replication", "role").await == Some("master".into())
        })
        .await;
    }

    /// `SENTINEL FAILOVER` from `old` to `new`; then what Sentinel does to
    /// `old` some seconds later, done at once (so that the gateway's requests,
    /// not its probe, find the change): `old` becomes a replica of `new` and
    /// drops its clients.
    async fn fail_over(&self, old: &RedisServer, new: &RedisServer) {
        self.sentinel.failover().await;
        self.wait_for_promotion(new, PATIENCE).await;
        old.demote_to_replica_of(new).await;
    }
}

/// The session records in `redis`.
async fn session_keys(redis: &RedisServer) -> Vec<String> {
    redis::cmd("KEYS")
        .arg("*session:*")
        .query_async(&mut redis.connection().await)
        .await
        .unwrap()
}

/// Session lines for the Redis store behind `sentinel` (no redis_url: only
/// Sentinel names where the primary is).
fn sentinel_session(sentinel: &RedisServer, cache_ttl: &str) -> String {
    format!(
        "store = \"redis\"\nredis_sentinels = [\"redis://127.0.0.1:{}\"]\n\
         redis_sentinel_master = \"{}\"\ncache_ttl = \"{cache_ttl}\"",
        sentinel.port,
        common::process::SENTINEL_MASTER
    )
}

/// After a failover to `setup.replica`: `first`'s cookie still works and was
/// checked on the new primary (cache_ttl 0s: every request asks Redis), and a
/// new sign-in (a write only a primary accepts) works, with no new sign-in
/// for `first`.
async fn sessions_follow_the_new_primary(
    site: &Site,
    gateway: &Replica,
    first: &Browser,
    setup: &SentinelSetup,
    token_requests: usize,
) {
    let checked_before = setup.replica.command_calls("getex").await;
    assert_signed_in(
        first.get(gateway, "/after-failover").await,
        "the same cookie after the failover",
    )
    .await;
    assert!(
        setup.replica.command_calls("getex").await > checked_before,
        "the session was looked up on the new primary"
    );
    assert_eq!(
        site.idp.token_requests(),
        token_requests,
        "no new sign-in for the signed-in user"
    );
    let second = site.browser();
    second.sign_in(gateway).await;
    assert_signed_in(
        second.get(gateway, "/new-user").await,
        "a new sign-in after the failover",
    )
    .await;
    let keys = session_keys(&setup.replica).await;
    assert_eq!(keys.len(), 2, "both sessions on the new primary: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_keeps_every_cookie_and_new_sign_ins_reach_the_new_primary() {
    let Some(setup) = SentinelSetup::start("sentinel_failover").await else {
        return;
    };
    let site = Site::new().await;
    let (gateway, first) = setup.signed_in_gateway(&site).await;
    let token_requests = site.idp.token_requests();

    // Primary -> replica. Reads of 20 requests at once find the demoted
    // primary (READONLY, or the connection it dropped).
    setup.fail_over(&setup.primary, &setup.replica).await;
    // Only the gateway and this connection talk to the Sentinel: what it
    // processed meanwhile, besides this INFO, are the gateway's lookups
    // (SENTINEL MASTERS, one per lookup).
    let mut watch = setup.sentinel.connection().await;
    let processed = async |watch: &mut _| -> u64 {
        info_field(watch, "stats", "total_commands_processed")
            .await
            .and_then(|n| n.parse().ok())
            .expect("total_commands_processed")
    };
    let before = processed(&mut watch).await;
    let checked_before = setup.replica.command_calls("getex").await;
    let paths: Vec<String> = (0..20).map(|i| format!("/burst-{i}")).collect();
    let burst = paths.iter().map(|path| first.get(&gateway, path));
    for response in futures_util::future::join_all(burst).await {
        assert_signed_in(response, "a request failing over with 19 others").await;
    }
    assert_eq!(
        processed(&mut watch).await - before - 1,
        1,
        "requests failing together ask Sentinel once"
    );
    assert!(
        setup.replica.command_calls("getex").await >= checked_before + 20,
        "each request of the burst was answered by the new primary, none from the cache"
    );
    sessions_follow_the_new_primary(&site, &gateway, &first, &setup, token_requests).await;

    // And back. Now a sign-in's write is the first command to find the demoted
    // primary: refused (READONLY), it did not run, and is sent to the new one.
    setup
        .sentinel
        .wait_until_replicas_known(&[&setup.primary])
        .await;
    let third = site.browser();
    setup.fail_over(&setup.replica, &setup.primary).await;
    third.sign_in(&gateway).await;
    assert_signed_in(
        third.get(&gateway, "/third").await,
        "a sign-in whose write met the demoted primary",
    )
    .await;
    let keys = session_keys(&setup.primary).await;
    assert_eq!(keys.len(), 3, "every session on the primary: {keys:?}");
    assert_signed_in(
        first.get(&gateway, "/after-two-failovers").await,
        "the first cookie after two failovers",
    )
    .await;
    assert_eq!(
        site.idp.token_requests(),
        token_requests + 2,
        "only the two new users signed in"
    );
    let (status, body) = gateway.readyz(&first).await;
    assert_eq!(status, 200, "ready on the new primary: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_by_the_replica_sentinel_promotes_and_nobody_signs_in_again() {
    let Some(mut setup) = SentinelSetup::start("sentinel_killed_primary").await else {
        return;
    };
    let site = Site::new().await;
    let (gateway, first) = setup.signed_in_gateway(&site).await;
    let token_requests = site.idp.token_requests();

    setup.primary.stop();
    // Until Sentinel promotes the replica the session is served from the cache,
    // and no cookie is touched.
    let response = first.get(&gateway, "/primary-down").await;
    assert!(
        response.headers().get("set-cookie").is_none(),
        "no cookie is cleared while the primary is down"
    );
    assert_signed_in(response, "a cached session while the primary is down").await;
    setup
        .wait_for_promotion(&setup.replica, Duration::from_secs(60))
        .await;
    sessions_follow_the_new_primary(&site, &gateway, &first, &setup, token_requests).await;
    gateway.wait_ready(&first).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_sentinel_is_unreachable_starts_not_ready_naming_sentinel_and_becomes_ready(
) {
    let Some(primary) = RedisServer::start("sentinel_unreachable").await else {
        return;
    };
    let Some(mut sentinel) =
        RedisServer::start_sentinel("sentinel_unreachable", &primary, &[]).await
    else {
        return;
    };
    sentinel.stop();
    let site = Site::new().await;
    let gateway = Replica::start(&site, &sentinel_session(&sentinel, "1s")).await;
    let browser = site.browser();
    let body = gateway
        .wait_not_ready_saying(&browser, "Sentinel", |body| body.contains("Sentinel"))
        .await;
    assert!(
        body.contains("session_store") && body.contains("mymaster"),
        "{body}"
    );
    let healthz = browser
        .client
        .get(gateway.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200, "alive while not ready");

    sentinel.resume().await;
    gateway.wait_ready(&browser).await;
    browser.sign_in(&gateway).await;
    assert_signed_in(
        browser.get(&gateway, "/").await,
        "signed in once Sentinel answers",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_name_no_sentinel_monitors_is_not_ready_and_names_the_key() {
    let Some(primary) = RedisServer::start("sentinel_wrong_name").await else {
        return;
    };
    let Some(sentinel) = RedisServer::start_sentinel("sentinel_wrong_name", &primary, &[]).await
    else {
        return;
    };
    let site = Site::new().await;
    let session = sentinel_session(&sentinel, "1s").replace(
        &format!("\"{}\"", common::process::SENTINEL_MASTER),
        "\"not-monitored\"",
    );
    let gateway = Replica::start(&site, &session).await;
    let body = gateway
        .wait_not_ready_saying(&site.browser(), "the unknown name", |body| {
            body.contains("not-monitored")
        })
        .await;
    assert!(
        body.contains("no Redis Sentinel names") && body.contains("session.redis_sentinel_master"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_and_a_primary_over_tls_with_a_private_ca_keep_sessions() {
    let Some(primary) = RedisServer::start_tls("sentinel_tls").await else {
        return;
    };
    let Some(sentinel) = RedisServer::start_sentinel("sentinel_tls", &primary, &[]).await else {
        return;
    };
    let site = Site::new().await;
    // rediss:// to the Sentinel and (redis_url's scheme) to the primary it
    // names, both trusting the private CA.
    let session = format!(
        "{}\nredis_url = \"rediss://127.0.0.1/\"\nredis_ca_file = \"{}\"",
        sentinel_session(&sentinel, "1s").replace("redis://127.0.0.1", "rediss://127.0.0.1"),
        primary.ca_file().display()
    );
    let gateway = Replica::start(&site, &session).await;
    let browser = site.browser();
    gateway.wait_ready(&browser).await;
    browser.sign_in(&gateway).await;
    assert_signed_in(browser.get(&gateway, "/").await, "signed in over TLS").await;
    let keys = session_keys(&primary).await;
    assert_eq!(keys.len(), 1, "the session in the TLS primary: {keys:?}");
}

// ------------------------------------------------------- front-channel logout

#[tokio::test]
async fn frontchannel_logout_ends_the_sessions_of_a_sid_on_the_memory_store() {
    let gw = gateway(echo_upstream().await)
        .idp(|o| o.sid_claim = true)
        .start()
        .await;
    frontchannel_checks(&gw).await;
}

#[tokio::test]
async fn frontchannel_logout_ends_the_sessions_of_a_sid_on_the_redis_store() {
    let Some(redis) = RedisServer::start("frontchannel_logout_redis").await else {
        return;
    };
    let gw = gateway(echo_upstream().await)
        .idp(|o| o.sid_claim = true)
        .session("store = \"redis\"")
        .session(&format!("redis_url = \"{}\"", redis.url()))
        .start()
        .await;
    frontchannel_checks(&gw).await;
}

async fn frontchannel_checks(gw: &common::TestGateway) {
    let signed_in = gw.http1();
    assert_eq!(
        signed_in.get(gw.url("/x")).send().await.unwrap().status(),
        200
    );
    let sid = gw.idp.sid_of(USER).expect("the IdP issued a sid");
    // The iframe: another site's context, no cookie.
    let iframe = gw.fresh_browser();
    let call = |query: String| {
        let iframe = iframe.clone();
        let url = gw.url(&format!("/.gateway/frontchannel_logout?{query}"));
        async move { iframe.get(url).send().await.unwrap() }
    };

    let wrong = call(format!("sid={sid}&iss=https%3A%2F%2Fevil.example%2Fv2.0")).await;
    assert_eq!(wrong.status(), 400);
    assert!(wrong
        .text()
        .await
        .unwrap()
        .contains("iss is not the issuer"));
    assert_eq!(
        signed_in.get(gw.url("/x")).send().await.unwrap().status(),
        200,
        "a refused call ends nothing"
    );
    let missing = call("iss=x".into()).await;
    assert_eq!(missing.status(), 400);
    assert!(missing
        .text()
        .await
        .unwrap()
        .contains("sid parameter is missing"));

    let unknown = call("sid=00000000-0000-0000-0000-000000000000".into()).await;
    assert_eq!(unknown.status(), 200, "nothing matched is still 200");

    // Entra's shape: sid only, no iss.
    let ok = call(format!("sid={sid}")).await;
    assert_eq!(ok.status(), 200);
    let issuer = reqwest::Url::parse(&gw.idp.issuer()).unwrap();
    let origin = issuer.origin().ascii_serialization();
    assert_eq!(
        ok.headers()["content-security-policy"],
        format!("frame-ancestors {origin}").as_str(),
        "only the IdP's origin may frame it"
    );
    assert_eq!(ok.headers()["cache-control"], "no-store");
    assert!(ok.headers().get("set-cookie").is_none());
    assert_eq!(ok.text().await.unwrap(), "", "an empty page");
    let after = signed_in.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(after.status(), 401, "the session of that sid ended");

    // With the configured iss (the spec's shape): accepted too.
    let again = gw.http1();
    assert_eq!(gw.sign_in(&again, "/").await.status(), 303);
    let sid = gw.idp.sid_of(USER).unwrap();
    let iss = common::urlencode(&gw.idp.issuer());
    assert_eq!(call(format!("sid={sid}&iss={iss}")).await.status(), 200);
    assert_eq!(again.get(gw.url("/x")).send().await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontchannel_logout_on_one_replica_ends_the_session_on_the_other() {
    let Some(redis) = RedisServer::start("frontchannel_logout_replicas").await else {
        return;
    };
    let site = Site::new().await;
    let (a, b, browser) = two_replicas(&site, &redis, "1s").await;
    browser.sign_in(&a).await;
    assert_signed_in(browser.get(&a, "/").await, "signed in on A").await;
    let sid = site.idp.sid_of(USER).expect("sid");
    let iframe = site.browser();
    let response = iframe
        .client
        .get(b.url(&format!("/.gateway/frontchannel_logout?sid={sid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let response = browser.get(&a, "/").await;
        if response.status() == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "A still serves the session");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------ refresh

/// What the upstream saw: the access tokens it received, and any that had
/// already expired when they arrived.
#[derive(Default)]
struct SeenTokens {
    tokens: std::sync::Mutex<Vec<String>>,
    expired: std::sync::Mutex<Vec<String>>,
}

/// An upstream that checks the `exp` of every bearer token it receives.
async fn token_checking_upstream(seen: Arc<SeenTokens>) -> SocketAddr {
    common::upstream(move |request: http::Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            let token = request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_string();
            let exp = token_exp(&token);
            let now = oidc_gateway::session::unix_now();
            if exp.is_none_or(|exp| exp <= now) {
                seen.expired.lock().unwrap().push(token.clone());
            }
            seen.tokens.lock().unwrap().push(token);
            http::Response::new(common::full_body("ok"))
        }
    })
    .await
}

/// The `exp` claim of a JWT (the dev IdP's access tokens are JWTs).
fn token_exp(token: &str) -> Option<u64> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&json).ok()?["exp"].as_u64()
}

/// Waits until the session's access token is due for renewal (time passing,
/// not synchronization: the gateway's renewal is driven by the clock).
async fn until_renewal_is_due(token: &str, lifetime: u64) {
    let exp = token_exp(token).expect("a JWT access token");
    let renew_at = exp - lifetime / 2;
    let now = oidc_gateway::session::unix_now();
    if renew_at >= now {
        tokio::time::sleep(Duration::from_secs(renew_at - now + 1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_concurrent_requests_at_renewal_make_exactly_one_refresh_and_never_pass_an_expired_token(
) {
    let seen = Arc::new(SeenTokens::default());
    let gw = gateway(token_checking_upstream(seen.clone()).await)
        .idp(|o| o.token_lifetime = Duration::from_secs(30))
        .section("[headers]\npass_access_token = true")
        .start()
        .await;
    let client = gw.http1();
    assert_eq!(
        client.get(gw.url("/first")).send().await.unwrap().status(),
        200
    );
    let first = seen.tokens.lock().unwrap()[0].clone();
    assert!(!first.is_empty(), "the access token is passed upstream");
    let before = gw.idp.token_requests();

    until_renewal_is_due(&first, 30).await;
    let requests = (0..40).map(|i| {
        let client = gw.http2();
        let url = gw.url(&format!("/concurrent/{i}"));
        async move { client.get(url).send().await.unwrap().status() }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        gw.idp.token_requests() - before,
        1,
        "exactly one refresh for 40 concurrent requests"
    );
    assert_eq!(
        client.get(gw.url("/after")).send().await.unwrap().status(),
        200
    );
    let last = seen.tokens.lock().unwrap().last().cloned().unwrap();
    assert_ne!(last, first, "the renewed token is passed upstream");
    assert!(
        seen.expired.lock().unwrap().is_empty(),
        "the upstream never received an expired access token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_idp_keeps_the_session_and_its_valid_token_and_invalid_grant_ends_it() {
    use oidc_gateway::devidp::TokenEndpointMode;
    let seen = Arc::new(SeenTokens::default());
    let gw = gateway(token_checking_upstream(seen.clone()).await)
        .idp(|o| o.token_lifetime = Duration::from_secs(4))
        .session("refresh = true")
        .section("[headers]\npass_access_token = true")
        .start()
        .await;
    let client = gw.http1();
    assert_eq!(client.get(gw.url("/")).send().await.unwrap().status(), 200);
    let first = seen.tokens.lock().unwrap()[0].clone();

    // Due for renewal, the IdP failing: the still-valid token goes on.
    gw.idp.set_token_endpoint(TokenEndpointMode::Status(503));
    until_renewal_is_due(&first, 4).await;
    let response = client.get(gw.url("/idp-down")).send().await.unwrap();
    if token_exp(&first).unwrap() > oidc_gateway::session::unix_now() {
        assert_eq!(response.status(), 200, "the still-valid token is used");
        assert_eq!(seen.tokens.lock().unwrap().last().unwrap(), &first);
    }
    // Expired and still not renewable: 503 saying so, the session kept.
    let exp = token_exp(&first).unwrap();
    let now = oidc_gateway::session::unix_now();
    if exp >= now {
        tokio::time::sleep(Duration::from_secs(exp - now + 1)).await;
    }
    let response = client.get(gw.url("/expired")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("set-cookie").is_none());
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("token_renewal_unavailable"));

    // The IdP is back: renewed without a new sign-in.
    gw.idp.set_token_endpoint(TokenEndpointMode::Normal);
    let response = client.get(gw.url("/back")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let renewed = seen.tokens.lock().unwrap().last().unwrap().clone();
    assert_ne!(renewed, first);

    // The refresh token revoked at the IdP: invalid_grant ends the session.
    gw.idp.revoke_refresh_tokens();
    until_renewal_is_due(&renewed, 4).await;
    let response = client.get(gw.url("/revoked")).send().await.unwrap();
    assert_eq!(response.status(), 401, "the session ended");
    assert!(
        seen.expired.lock().unwrap().is_empty(),
        "the upstream never received an expired access token"
    );
}

#[tokio::test]
async fn without_refresh_no_refresh_token_is_asked_for_or_kept() {
    let gw = gateway(echo_upstream().await).anonymous().start().await;
    let start = gw
        .http1()
        .get(gw.url("/.gateway/sign_in?rd=/"))
        .send()
        .await
        .unwrap();
    let location = common::location(&start);
    let scope = common::query_param(&location, "scope").unwrap();
    assert!(!scope.contains("offline_access"), "{scope}");

    let gw = gateway(echo_upstream().await)
        .session("refresh = true")
        .anonymous()
        .start()
        .await;
    let start = gw
        .http1()
        .get(gw.url("/.gateway/sign_in?rd=/"))
        .send()
        .await
        .unwrap();
    let scope = common::query_param(&common::location(&start), "scope").unwrap();
    assert!(scope.split(' ').any(|s| s == "offline_access"), "{scope}");
}
