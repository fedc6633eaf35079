//! `/.gateway/auth`, the forward-auth endpoint for reverse proxies in front of
//! the gateway: first the endpoint itself over HTTPS, then the shipped examples
//! (examples/nginx, examples/caddy) run for real with nginx and Caddy in front
//! of an echo application, skipped with a message where the binary is missing.
//! (Traefik is not packaged by Debian: its example is only checked for shape.)

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;

const GROUPS: &str = "0b5e7a3c-admins,5f1d2e4b-users";

/// [[routes]] shared by the tests: a public area, an area for a group the test
/// user is not in, and a method-specific deny rule.
const ROUTES: &str = r#"
[[routes]]
path = "/public/**"
action = "public"

[[routes]]
path = "/admin/**"
allow = { groups = ["nobody"] }

[[routes]]
path = "/reports/**"
methods = ["DELETE"]
action = "deny"
"#;

fn trusted() -> &'static str {
    "trusted_proxies = [\"127.0.0.1\"]"
}

/// GET /.gateway/auth with extra request headers.
async fn ask(
    gw: &TestGateway,
    client: &reqwest::Client,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = client.get(gw.url("/.gateway/auth"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    tokio::time::timeout(Duration::from_secs(10), request.send())
        .await
        .expect("auth answers within 10 s")
        .expect("auth request")
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii header"))
}

fn assert_no_identity(response: &reqwest::Response, context: &str) {
    for name in [
        "x-auth-request-user",
        "x-auth-request-email",
        "x-auth-request-preferred-username",
        "x-auth-request-groups",
        "x-auth-request-oid",
        "x-auth-request-tid",
        "x-gateway-assertion",
    ] {
        assert!(
            response.headers().get(name).is_none(),
            "{context}: {name} must not be sent"
        );
    }
}

/// The claims of a JWT (not verified: the assertion tests do that).
fn jwt_claims(token: &str) -> serde_json::Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts: {token}");
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[1])
        .expect("base64url payload");
    serde_json::from_slice(&payload).expect("JSON claims")
}

// ---------------------------------------------------------------------------
// The endpoint, directly over HTTPS
// ---------------------------------------------------------------------------

#[tokio::test]
async fn signed_in_browser_gets_202_with_its_identity() {
    let gw = gateway(echo_upstream().await).start().await;
    let response = ask(&gw, &gw.http1(), &[]).await;
    assert_eq!(response.status(), 202);
    assert_eq!(header(&response, "x-auth-request-user"), Some(USER));
    assert_eq!(
        header(&response, "x-auth-request-preferred-username"),
        Some(USER)
    );
    assert_eq!(header(&response, "x-auth-request-groups"), Some(GROUPS));
    assert_eq!(
        header(&response, "x-auth-request-oid"),
        Some(gw.idp.object_id(USER).as_str())
    );
    assert_eq!(header(&response, "x-auth-request-tid"), Some(TENANT));
    // The mock IdP sends no email claim by default (like Entra often): no header.
    assert_eq!(header(&response, "x-auth-request-email"), None);
    assert_eq!(header(&response, "cache-control"), Some("no-store"));
    let assertion = header(&response, "x-gateway-assertion").expect("the signed assertion");
    assert_eq!(jwt_claims(assertion)["name"], USER);
    // The same over HTTP/2.
    let response = ask(&gw, &gw.http2(), &[]).await;
    assert_eq!(response.status(), 202);
    assert_eq!(header(&response, "x-auth-request-user"), Some(USER));
}

#[tokio::test]
async fn the_email_header_is_sent_when_the_token_has_the_claim() {
    let gw = gateway(echo_upstream().await)
        .idp(|o| o.email_claim = true)
        .start()
        .await;
    let response = ask(&gw, &gw.http1(), &[]).await;
    assert_eq!(response.status(), 202);
    assert_eq!(header(&response, "x-auth-request-email"), Some(USER));
}

#[tokio::test]
async fn anonymous_gets_401_json() {
    let gw = gateway(echo_upstream().await).anonymous().start().await;
    // Even a browser navigation: the proxy, not the endpoint, decides about redirects.
    let response = ask(&gw, &gw.fresh_browser(), &[("accept", "text/html")]).await;
    assert_eq!(response.status(), 401);
    assert_no_identity(&response, "anonymous");
    assert!(
        header(&response, "content-type").is_some_and(|t| t.starts_with("application/json")),
        "401 is JSON"
    );
    let json: serde_json::Value = response.json().await.expect("JSON body");
    assert_eq!(json["error"], "unauthenticated");
}

#[tokio::test]
async fn a_user_the_access_rules_refuse_gets_403() {
    let gw = gateway(echo_upstream().await)
        .section("[access]\ngroups = [\"nobody\"]")
        .start()
        .await;
    let response = ask(&gw, &gw.http1(), &[]).await;
    assert_eq!(response.status(), 403);
    assert_no_identity(&response, "denied");
    let json: serde_json::Value = response.json().await.expect("JSON body");
    assert_eq!(json["error"], "forbidden");
    assert_eq!(json["user"], USER);
}

#[tokio::test]
async fn an_untrusted_client_cannot_choose_the_uri_being_judged() {
    // Default trusted_proxies: nobody. The spoofed URI names a public route,
    // but the request is judged as `GET /`, which needs a session.
    let gw = gateway(echo_upstream().await)
        .section(ROUTES)
        .anonymous()
        .start()
        .await;
    let browser = gw.fresh_browser();
    for spoof in [
        [
            ("x-forwarded-uri", "/public/x"),
            ("x-forwarded-method", "GET"),
        ],
        [
            ("x-original-uri", "/public/x"),
            ("x-forwarded-method", "GET"),
        ],
    ] {
        let response = ask(&gw, &browser, &spoof).await;
        assert_eq!(
            response.status(),
            401,
            "{spoof:?} from an untrusted peer is ignored"
        );
    }
}

#[tokio::test]
async fn a_trusted_proxy_names_the_original_request() {
    let gw = gateway(echo_upstream().await)
        .server(trusted())
        .section(ROUTES)
        .anonymous()
        .start()
        .await;
    let browser = gw.fresh_browser();
    // Anonymous on a public route: 202, with no identity.
    for name in ["x-forwarded-uri", "x-original-uri"] {
        let response = ask(&gw, &browser, &[(name, "/public/x?y=1")]).await;
        assert_eq!(
            response.status(),
            202,
            "{name}: a public route passes anonymously"
        );
        assert_no_identity(&response, "public route");
    }
    // Anonymous elsewhere: 401.
    let response = ask(&gw, &browser, &[("x-original-uri", "/app/page")]).await;
    assert_eq!(response.status(), 401);
    // A path the gateway refuses to judge (encoded slash): 400, never 2xx.
    let response = ask(&gw, &browser, &[("x-original-uri", "/public/..%2Fadmin")]).await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn a_trusted_proxy_gets_route_rules_applied_to_the_original_uri_and_method() {
    let gw = gateway(echo_upstream().await)
        .server(trusted())
        .section(ROUTES)
        .start()
        .await;
    let client = gw.http1();
    for (headers, expected) in [
        (vec![("x-original-uri", "/admin/x")], 403),
        // Non-public rules match case-insensitively, and never the query.
        (vec![("x-original-uri", "/ADMIN/x")], 403),
        (vec![("x-original-uri", "/admin/x?to=/other")], 403),
        (vec![("x-original-uri", "/other?to=/admin/x")], 202),
        (vec![("x-forwarded-uri", "/admin/x")], 403),
        // No URI header at all: `/`.
        (vec![], 202),
        // The method comes from X-Forwarded-Method.
        (
            vec![
                ("x-original-uri", "/reports/1"),
                ("x-forwarded-method", "DELETE"),
            ],
            403,
        ),
        (vec![("x-original-uri", "/reports/1")], 202),
    ] {
        let status = ask(&gw, &client, &headers).await.status();
        assert_eq!(status, expected, "{headers:?}");
    }

    let response = ask(&gw, &client, &[("x-original-uri", "/other")]).await;
    assert_eq!(response.status(), 202);
    assert_eq!(header(&response, "x-auth-request-user"), Some(USER));
    assert_eq!(header(&response, "x-auth-request-groups"), Some(GROUPS));
}

#[tokio::test]
async fn an_untrusted_client_is_judged_as_get_root() {
    // The other direction: a signed-in user from an untrusted peer naming a
    // refused path is still judged as `GET /` (allowed).
    let gw = gateway(echo_upstream().await).section(ROUTES).start().await;
    let response = ask(
        &gw,
        &gw.http1(),
        &[
            ("x-original-uri", "/admin/x"),
            ("x-forwarded-method", "DELETE"),
        ],
    )
    .await;
    assert_eq!(response.status(), 202);
}

/// Traefik and Caddy set X-Forwarded-Uri but pass a client's X-Original-URI
/// through unchanged; if the gateway preferred one, a client could choose the
/// path that is judged. The two headers disagreeing can only mean a spoof: 400.
#[tokio::test]
async fn conflicting_original_and_forwarded_uris_are_refused() {
    let gw = gateway(echo_upstream().await)
        .server(trusted())
        .section(ROUTES)
        .start()
        .await;
    let response = ask(
        &gw,
        &gw.http1(),
        &[
            ("x-forwarded-uri", "/admin/x"),
            ("x-original-uri", "/other"),
        ],
    )
    .await;
    assert_eq!(
        response.status(),
        400,
        "the proxy said /admin/x, the client /other"
    );
}

// ---------------------------------------------------------------------------
// The examples with real reverse proxies
// ---------------------------------------------------------------------------

fn example(path: &str) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The example with its placeholders replaced; every placeholder must be used
/// and none may remain.
fn render(template: &str, values: &[(&str, String)]) -> String {
    let mut text = template.to_string();
    let mut names: Vec<&(&str, String)> = values.iter().collect();
    names.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    for (name, value) in names {
        assert!(
            text.contains(name),
            "placeholder {name} is not in the example"
        );
        text = text.replace(name, value);
    }
    for (name, _) in values {
        assert!(!text.contains(name), "placeholder {name} left over");
    }
    text
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A child process killed (and reaped) on drop; its logs are printed when the test fails.
struct Process {
    name: &'static str,
    child: Child,
    logs: Vec<PathBuf>,
}

impl Process {
    fn spawn(name: &'static str, mut command: Command, dir: &Path, extra_logs: &[PathBuf]) -> Self {
        let out = dir.join(format!("{name}.out"));
        let file = std::fs::File::create(&out).expect("log file");
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut logs = vec![out];
        logs.extend_from_slice(extra_logs);
        Process { name, child, logs }
    }

    fn logs(&self) -> String {
        self.logs
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                format!("--- {} ---\n{text}", p.display())
            })
            .collect()
    }

    /// Waits (≤ 10 s) until `addr` accepts connections; fails if the process exits.
    async fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before listening:\n{}",
                    self.name,
                    self.logs()
                );
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} is not listening on {addr} after 10 s:\n{}",
                    self.name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// A reverse proxy in front: TLS on 127.0.0.1:<port> with its own certificate for localhost.
struct Front {
    name: &'static str,
    addr: SocketAddr,
    cert_pem: String,
    _process: Process,
    _dir: tempfile::TempDir,
}

impl Front {
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// A browser of its own (cookie jar), trusting the front's certificate only.
    fn browser(&self) -> reqwest::Client {
        self.browser_with(Arc::new(reqwest::cookie::Jar::default()))
    }

    fn browser_with(&self, jar: Arc<reqwest::cookie::Jar>) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.cert_pem.as_bytes()).expect("pem"),
            )
            .resolve("localhost", self.addr)
            .redirect(reqwest::redirect::Policy::none())
            .cookie_provider(jar)
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .expect("client")
    }
}

/// The files every front needs: its certificate and key, and the gateway's
/// certificate as the CA it trusts for the gateway.
struct FrontFiles {
    dir: tempfile::TempDir,
    cert_pem: String,
    cert: PathBuf,
    key: PathBuf,
    gateway_ca: PathBuf,
}

fn front_files(gw: &TestGateway) -> FrontFiles {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let cert_pem = pair.cert.pem();
    let (cert, key, gateway_ca) = (
        dir.path().join("front.crt"),
        dir.path().join("front.key"),
        dir.path().join("gateway-ca.pem"),
    );
    std::fs::write(&cert, &cert_pem).expect("write cert");
    std::fs::write(&key, pair.signing_key.serialize_pem()).expect("write key");
    std::fs::write(&gateway_ca, &gw.cert_pem).expect("write gateway ca");
    FrontFiles {
        dir,
        cert_pem,
        cert,
        key,
        gateway_ca,
    }
}

/// The gateway behind a front on `front_port`, and the echo application (its
/// upstream, which the front proxies to).
impl FrontFiles {
    /// The example's placeholders for the gateway, the application and the
    /// front's own certificate (every front example has them).
    fn placeholders(&self, gw: &TestGateway, app: SocketAddr) -> Vec<(&'static str, String)> {
        vec![
            ("TLS_CERT", self.cert.display().to_string()),
            ("TLS_KEY", self.key.display().to_string()),
            ("GATEWAY_ADDR", gw.addr.to_string()),
            ("GATEWAY_TLS_NAME", "localhost".into()),
            ("GATEWAY_CA", self.gateway_ca.display().to_string()),
            ("APP_ADDR", app.to_string()),
        ]
    }
}

/// Starts the front `name` with `command` (its logs: its output plus
/// `extra_logs`) and waits until it listens on 127.0.0.1:`port`.
async fn start_front(
    name: &'static str,
    command: Command,
    files: FrontFiles,
    extra_logs: &[PathBuf],
    port: u16,
) -> Front {
    let mut process = Process::spawn(name, command, files.dir.path(), extra_logs);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    process.wait_listening(addr).await;
    Front {
        name,
        addr,
        cert_pem: files.cert_pem,
        _process: process,
        _dir: files.dir,
    }
}

async fn gateway_behind_front(front_port: u16) -> (TestGateway, SocketAddr) {
    let app = echo_upstream().await;
    let gw = gateway(app)
        .server(trusted())
        .server(&format!("public_url = \"https://localhost:{front_port}\""))
        .section(ROUTES)
        .anonymous()
        .start()
        .await;
    (gw, app)
}

/// `program` when it is installed (PATH, then /usr/sbin and /usr/bin).
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    tokio::time::timeout(Duration::from_secs(15), request.send())
        .await
        .expect("answer within 15 s")
        .expect("request")
}

/// What both fronts must do, from the first anonymous request to the application.
async fn check_front(front: &Front, gw: &TestGateway) {
    let who = front.name;
    // The application's own cookies, around which the gateway's are set.
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let site: reqwest::Url = front.url("/").parse().expect("url");
    jar.add_cookie_str("app_a=1; Path=/", &site);
    jar.add_cookie_str("app_z=2; Path=/", &site);
    let browser = front.browser_with(jar);

    // Anonymous XHR and API clients: 401 JSON naming the sign-in URL (no redirect).
    for headers in [
        vec![
            ("x-requested-with", "XMLHttpRequest"),
            ("accept", "text/html, */*"),
        ],
        vec![("accept", "application/json")],
        vec![("sec-fetch-mode", "cors"), ("accept", "text/html")],
    ] {
        let mut request = browser.get(front.url("/app/data?q=1"));
        for (name, value) in &headers {
            request = request.header(*name, *value);
        }
        let response = send(request).await;
        assert_eq!(response.status(), 401, "{who}: anonymous {headers:?}");
        let json: serde_json::Value = response.json().await.expect("401 JSON");
        assert_eq!(json["error"], "unauthenticated", "{who}");
        assert_eq!(
            json["login_url"], "/.gateway/sign_in?rd=/app/data?q=1",
            "{who}"
        );
    }

    // An anonymous browser navigation: 302 to sign_in with the whole URI.
    let response = send(
        browser
            .get(front.url("/app/page?x=1&y=2"))
            .header("accept", "text/html,application/xhtml+xml")
            .header("x-forwarded-user", "admin"),
    )
    .await;
    assert_eq!(response.status(), 302, "{who}: anonymous navigation");
    assert_eq!(
        location(&response),
        "/.gateway/sign_in?rd=/app/page?x=1&y=2",
        "{who}"
    );
    // The same with Sec-Fetch-Mode: navigate (no Accept needed).
    let navigate = send(
        browser
            .get(front.url("/app/other"))
            .header("sec-fetch-mode", "navigate"),
    )
    .await;
    assert_eq!(navigate.status(), 302, "{who}: Sec-Fetch-Mode: navigate");

    // Follow it: front → gateway sign_in → IdP (auto-login) → front's callback.
    let callback = gw.follow_login(&browser, response).await;
    assert_eq!(
        callback.url().as_str().split('?').next(),
        Some(front.url("/api/oidc/callback").as_str()),
        "{who}: the IdP returns to the public origin (the front)"
    );
    assert_eq!(callback.status(), 303, "{who}: callback");
    let back = callback.url().join(&location(&callback)).expect("url");
    assert_eq!(back.as_str(), front.url("/app/page?x=1&y=2"), "{who}");

    // Signed in: the application gets the identity, and nothing a client made up.
    let response = send(
        browser
            .get(back)
            .header("accept", "text/html")
            .header("x-forwarded-user", "admin")
            .header("x-forwarded-groups", "admins")
            .header("x-forwarded-email", "admin@evil.example")
            .header("x-forwarded-oid", "00000000-0000-0000-0000-000000000bad")
            .header("x-forwarded-tid", "00000000-0000-0000-0000-000000000bad")
            .header("x-auth-request-user", "admin")
            .header("x-auth-request-oid", "00000000-0000-0000-0000-000000000bad")
            .header("x-gateway-assertion", "forged")
            .header("x-original-uri", "/public/x"),
    )
    .await;
    assert_eq!(response.status(), 200, "{who}: signed in");
    let echo: serde_json::Value = response.json().await.expect("echo");
    assert_eq!(echo["uri"], "/app/page?x=1&y=2", "{who}");
    assert_eq!(echoed(&echo, "x-forwarded-user"), [USER], "{who}");
    assert_eq!(
        echoed(&echo, "x-forwarded-preferred-username"),
        [USER],
        "{who}"
    );
    assert_eq!(echoed(&echo, "x-forwarded-groups"), [GROUPS], "{who}");
    let oid = gw.idp.object_id(USER);
    assert_eq!(echoed(&echo, "x-forwarded-oid"), [oid.as_str()], "{who}");
    assert_eq!(echoed(&echo, "x-forwarded-tid"), [TENANT], "{who}");
    assert!(
        echoed(&echo, "x-auth-request-oid").is_empty(),
        "{who}: {echo}"
    );
    assert!(
        echoed(&echo, "x-forwarded-email").is_empty(),
        "{who}: no email claim, no header, and not the client's: {echo}"
    );
    assert!(
        echoed(&echo, "x-auth-request-user").is_empty(),
        "{who}: {echo}"
    );
    let assertion = echoed(&echo, "x-gateway-assertion");
    assert_eq!(assertion.len(), 1, "{who}: one assertion: {echo}");
    assert_eq!(jwt_claims(assertion[0])["name"], USER, "{who}");
    let cookies = echoed(&echo, "cookie").join("; ");
    assert!(
        !cookies.contains("__Host-oidc-gateway="),
        "{who}: the gateway's session cookie stays away from the application: {cookies:?}"
    );
    assert!(
        cookies.contains("app_a=1") && cookies.contains("app_z=2"),
        "{who}: the application's own cookies pass: {cookies:?}"
    );

    // The gateway's own endpoints are routed to the gateway.
    let me = send(browser.get(front.url("/.gateway/me"))).await;
    assert_eq!(me.status(), 200, "{who}: /.gateway/me");
    let me: serde_json::Value = me.json().await.expect("me JSON");
    assert_eq!(me["user"], USER, "{who}: {me}");

    // The auth endpoint itself is not reachable through the front.
    let status = send(
        browser
            .get(front.url("/.gateway/auth"))
            .header("x-original-uri", "/admin/x"),
    )
    .await
    .status();
    assert_eq!(status, 404, "{who}: /.gateway/auth from outside");

    // Route rules see the original path and method through the front; a
    // client's X-Original-URI / X-Forwarded-Uri cannot change that.
    for spoof in [None, Some("x-original-uri"), Some("x-forwarded-uri")] {
        let mut request = browser.get(front.url("/admin/x"));
        if let Some(name) = spoof {
            request = request.header(name, "/other");
        }
        let status = send(request).await.status();
        assert_eq!(status, 403, "{who}: /admin/x with {spoof:?}");
    }
    let status = send(browser.delete(front.url("/reports/1"))).await.status();
    assert_eq!(status, 403, "{who}: DELETE /reports/1");
    let status = send(browser.get(front.url("/reports/1"))).await.status();
    assert_eq!(status, 200, "{who}: GET /reports/1");

    // A public route: the application is reached anonymously, without any identity.
    let anonymous = front.browser();
    let response = send(
        anonymous
            .get(front.url("/public/x"))
            .header("x-forwarded-user", "admin")
            .header("x-forwarded-oid", "00000000-0000-0000-0000-000000000bad")
            .header("x-forwarded-tid", "00000000-0000-0000-0000-000000000bad")
            .header("x-gateway-assertion", "forged")
            .header("x-auth-request-user", "admin"),
    )
    .await;
    assert_eq!(response.status(), 200, "{who}: public route");
    let echo: serde_json::Value = response.json().await.expect("echo");
    for name in [
        "x-forwarded-user",
        "x-forwarded-oid",
        "x-forwarded-tid",
        "x-gateway-assertion",
        "x-auth-request-user",
    ] {
        assert!(
            echoed(&echo, name).is_empty(),
            "{who}: {name} on a public route: {echo}"
        );
    }
    // ... while an anonymous client claiming the public path is still judged by its real path.
    let response = send(
        anonymous
            .get(front.url("/app/x"))
            .header("x-original-uri", "/public/x")
            .header("x-forwarded-uri", "/public/x"),
    )
    .await;
    assert_eq!(response.status(), 401, "{who}: spoofed public path");
}

#[tokio::test]
async fn nginx_example_with_auth_request() {
    let Some(nginx) = find_program("nginx") else {
        return common::missing::program_missing(
            "nginx example test",
            "nginx",
            "apt-get install -y nginx-light",
        );
    };
    let version = Command::new(&nginx).arg("-V").output().expect("nginx -V");
    let build = String::from_utf8_lossy(&version.stderr).into_owned()
        + &String::from_utf8_lossy(&version.stdout);
    if !build.contains("with-http_auth_request_module") {
        return common::missing::program_missing(
            "nginx example test",
            "nginx's auth_request module",
            "Debian's nginx-light and nginx have it",
        );
    }

    let port = free_port();
    let (gw, app) = gateway_behind_front(port).await;
    let files = front_files(&gw);
    let dir = files.dir.path().to_path_buf();
    let mut placeholders = files.placeholders(&gw, app);
    placeholders.push(("LISTEN_ADDR", format!("127.0.0.1:{port}")));
    placeholders.push(("SERVER_NAME", "localhost".into()));
    let server = render(&example("nginx/oidc-gateway.conf"), &placeholders);
    std::fs::write(dir.join("oidc-gateway.conf"), server).expect("write server block");
    // A minimal main configuration around the example; one process
    // (master_process off) so that killing it leaves nothing behind.
    let d = dir.display();
    let main = format!(
        "master_process off;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {d}/client_body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   include {d}/oidc-gateway.conf;\n\
         }}\n"
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, main).expect("write nginx.conf");
    let error_log = dir.join("error.log");
    let globals = format!(
        "daemon off; pid {d}/nginx.pid; error_log {} info;",
        error_log.display()
    );

    let check = Command::new(&nginx)
        .arg("-t")
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf)
        .arg("-g")
        .arg(&globals)
        .output()
        .expect("nginx -t");
    assert!(
        check.status.success(),
        "nginx -t refuses the example:\n{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let mut command = Command::new(&nginx);
    command
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf)
        .arg("-g")
        .arg(&globals);
    let front = start_front("nginx", command, files, &[error_log], port).await;
    check_front(&front, &gw).await;
}

#[tokio::test]
async fn caddy_example_with_forward_auth() {
    let Some(caddy) = find_program("caddy") else {
        return common::missing::program_missing(
            "Caddy example test",
            "caddy",
            "apt-get install -y caddy",
        );
    };
    let port = free_port();
    let (gw, app) = gateway_behind_front(port).await;
    let files = front_files(&gw);
    let dir = files.dir.path().to_path_buf();
    let mut placeholders = files.placeholders(&gw, app);
    placeholders.push(("SITE_ADDRESS", format!("https://localhost:{port}")));
    let site = render(&example("caddy/Caddyfile"), &placeholders);
    // Global options for a throw-away instance: no admin endpoint, nothing
    // written outside the temporary directory, no HTTP→HTTPS redirect listener.
    let caddyfile = format!(
        "{{\n\tadmin off\n\tauto_https disable_redirects\n\tstorage file_system {}\n}}\n\n{site}",
        dir.join("data").display()
    );
    let conf = dir.join("Caddyfile");
    std::fs::write(&conf, caddyfile).expect("write Caddyfile");

    let mut command = Command::new(&caddy);
    command
        .arg("run")
        .arg("--config")
        .arg(&conf)
        .arg("--adapter")
        .arg("caddyfile")
        .env("HOME", &dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_DATA_HOME", dir.join("data"));
    let front = start_front("caddy", command, files, &[], port).await;
    check_front(&front, &gw).await;
}

#[test]
fn traefik_example_has_the_expected_shape() {
    let text = example("traefik/dynamic.yml");
    assert!(!text.contains('\t'), "YAML is indented with spaces only");
    for (n, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        assert!(indent % 2 == 0, "line {}: odd indentation", n + 1);
    }
    for needle in [
        "address: \"https://gateway:8443/.gateway/auth\"",
        "trustForwardHeader: true",
        "authRequestHeaders:",
        "- \"X-Auth-Request-User\"",
        "- \"X-Gateway-Assertion\"",
        "PathPrefix(`/.gateway/`)",
        "!Path(`/.gateway/auth`)",
        "Path(`/api/oidc/callback`)",
    ] {
        assert!(text.contains(needle), "dynamic.yml lacks {needle}");
    }
    // Every insecureSkipVerify comes right after a comment pointing to the production setting.
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("insecureSkipVerify: true") {
            let comment: String = lines[i.saturating_sub(3)..i].concat();
            assert!(
                comment.contains("production"),
                "line {}: insecureSkipVerify without its warning",
                i + 1
            );
        }
    }

    // A real YAML parse when Python's yaml module is there (no Rust YAML crate here).
    let script = r#"
import sys, yaml
doc = yaml.safe_load(sys.stdin)
http = doc["http"]
fa = http["middlewares"]["oidc-forward-auth"]["forwardAuth"]
assert fa["address"] == "https://gateway:8443/.gateway/auth", fa
assert fa["trustForwardHeader"] is True
assert "X-Original-URI" not in fa["authRequestHeaders"]
assert set(fa["authResponseHeaders"]) == {"X-Auth-Request-User", "X-Auth-Request-Email",
    "X-Auth-Request-Preferred-Username", "X-Auth-Request-Groups", "X-Auth-Request-Oid",
    "X-Auth-Request-Tid", "X-Gateway-Assertion"}
strip = http["middlewares"]["oidc-strip-identity"]["headers"]["customRequestHeaders"]
assert strip["X-Forwarded-Oid"] == "" and strip["X-Forwarded-Tid"] == "", strip
routers = http["routers"]
assert routers["console"]["middlewares"] == ["oidc-strip-identity", "oidc-forward-auth"]
assert routers["oidc-gateway"]["service"] == "oidc-gateway"
for r in routers.values():
    assert r["service"] in http["services"], r
print("ok")
"#;
    yaml::check_with_python("dynamic.yml", &text, script);
}
