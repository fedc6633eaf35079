//! Browser end-to-end test of `oidc-gateway demo`: headless Chromium, driven
//! through chromedriver with plain W3C WebDriver JSON calls, opens a deep link
//! behind the gateway, signs in at the development identity provider, lands on
//! the deep link in the demo console, asks `/.gateway/me`, and signs out.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian:
//! `apt-get install -y chromium chromium-driver`); without them the test says
//! SKIPPED on stderr and passes, except in CI (`CI` set), where it fails.
//! Everything runs on loopback. With
//! `BROWSER_TEST_KEEP=1` (or when the test fails) the working directory with
//! the process logs and screenshots is kept and its path printed.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// Only the missing-program rule of the shared harness (the rest of it is unused here).
#[path = "common/missing.rs"]
mod missing;

use base64::Engine as _;
use oidc_gateway::session::cookies::{FLOW_COOKIE_PREFIX, SESSION_COOKIE};
use reqwest::Method;
use serde_json::{json, Value};
use tempfile::TempDir;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The bound of every waiting phase (process start, page loads, redirects).
const PHASE: Duration = Duration::from_secs(30);
/// How often a bounded wait polls.
const POLL: Duration = Duration::from_millis(100);
/// Title of every login page of the development IdP.
const IDP_TITLE: &str = "NOT Microsoft";
const CONSOLE_TITLE: &str = "oidc-gateway demo console";
const USER: &str = "carol@contoso.example";
/// The W3C web element identifier key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_sign_in_with_headless_chromium() {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        if !Path::new(tool).exists() {
            return missing::program_missing(
                "browser test",
                tool,
                "apt-get install -y chromium chromium-driver",
            );
        }
    }
    let started = Instant::now();
    let work = WorkDir::new();
    let dir = work.path().to_path_buf();

    let port = free_port();
    let origin = format!("https://localhost:{port}");
    let mut gateway = start_demo(&dir, port);
    wait_for_gateway(&mut gateway, &origin).await;

    let driver = ChromeDriver::start(&dir).await;
    let browser = Browser::new_session(&driver, &dir.join("chrome-profile")).await;

    // 1. A deep link without a session goes to the development IdP's form.
    let deep_link = format!("{origin}/reports?month=11");
    browser.navigate(&deep_link).await;
    let (idp_url, _) = browser
        .wait_page("the development IdP's login page", |_, title| {
            title.contains(IDP_TITLE)
        })
        .await;
    assert!(
        idp_url.starts_with("http://127.0.0.1:") && idp_url.contains("/oauth2/v2.0/authorize"),
        "the login page is the development IdP's authorize endpoint, got {idp_url}"
    );
    browser.save_screenshot(&dir.join("1-idp-login.png")).await;

    // 2. Sign in as carol.
    let user_field = browser.find("css selector", "input[name=username]").await;
    browser.clear(&user_field).await;
    browser.send_keys(&user_field, USER).await;
    let submit = browser
        .find("css selector", "form button[type=submit]")
        .await;
    browser.click(&submit).await;

    // 3. Back on the deep link, in the demo console, as carol.
    browser
        .wait_page("the demo console at the deep link", |url, title| {
            url == deep_link && title == CONSOLE_TITLE
        })
        .await;
    let greeting = browser
        .text(&browser.find("css selector", "h1").await)
        .await;
    assert_eq!(greeting, format!("Hello, {USER}"));
    let request_line = browser
        .text(&browser.find("css selector", "p code").await)
        .await;
    assert_eq!(
        request_line, "GET /reports?month=11",
        "the console received the deep link, query included"
    );
    let forwarded_user = browser
        .text(
            &browser
                .find("xpath", "//tr[td[1]='x-forwarded-user']/td[2]")
                .await,
        )
        .await;
    assert_eq!(forwarded_user, USER, "X-Forwarded-User row");
    let cookies = browser.cookie_names().await;
    assert!(
        cookies.iter().any(|c| c == SESSION_COOKIE),
        "the browser holds the session cookie {SESSION_COOKIE}, has {cookies:?}"
    );
    if let Some(cookie_row) = browser
        .find_optional("xpath", "//tr[td[1]='cookie']/td[2]")
        .await
    {
        let sent = browser.text(&cookie_row).await;
        assert!(
            !sent.contains(SESSION_COOKIE) && !sent.contains(FLOW_COOKIE_PREFIX),
            "the console must not receive the gateway's cookies, got cookie: {sent}"
        );
    }
    browser.save_screenshot(&dir.join("2-signed-in.png")).await;

    // 4. /.gateway/me knows carol.
    browser.navigate(&format!("{origin}/.gateway/me")).await;
    let me = browser
        .wait_body_text("/.gateway/me", |text| text.contains(USER))
        .await;
    let me_json = me.trim_start_matches(|c| c != '{');
    let me_json: Value = serde_json::from_str(me_json)
        .unwrap_or_else(|e| panic!("/.gateway/me is not JSON ({e}): {me}"));
    assert_eq!(me_json["user"], USER, "/.gateway/me: {me_json}");

    // 5. Sign out with the console's link.
    browser.navigate(&deep_link).await;
    browser
        .wait_page("the demo console again", |url, title| {
            url == deep_link && title == CONSOLE_TITLE
        })
        .await;
    let sign_out = browser.find("link text", "Sign out").await;
    browser.click(&sign_out).await;
    let (after_sign_out, _) = browser
        .wait_page("the end of the sign-out redirects", |url, title| {
            url != deep_link
                && !url.contains("/.gateway/sign_out")
                && !url.contains("/oauth2/v2.0/logout")
                && !title.is_empty()
        })
        .await;
    eprintln!("after sign-out the browser is at {after_sign_out}");
    browser.save_screenshot(&dir.join("3-signed-out.png")).await;

    // 6. The console is out of reach again: /reports shows the login form.
    browser.navigate(&format!("{origin}/reports")).await;
    let (url, title) = browser
        .wait_page("the login page after sign-out", |url, title| {
            title.contains(IDP_TITLE) || title == CONSOLE_TITLE || url.starts_with(&origin)
        })
        .await;
    assert!(
        title.contains(IDP_TITLE) && url.contains("/oauth2/v2.0/authorize"),
        "after sign-out /reports must show the IdP login page, got {url} titled {title:?}"
    );
    browser.find("css selector", "input[name=username]").await;
    assert!(
        !browser.source().await.contains("Hello, "),
        "the console is not shown after sign-out"
    );
    browser.navigate(&format!("{origin}/.gateway/me")).await;
    let me = browser
        .wait_body_text("/.gateway/me after sign-out", |text| {
            text.contains("unauthenticated")
        })
        .await;
    assert!(!me.contains(USER), "/.gateway/me after sign-out: {me}");
    // On the gateway's origin again: its session cookie is gone.
    let cookies = browser.cookie_names().await;
    assert!(
        !cookies.iter().any(|c| c == SESSION_COOKIE),
        "the session cookie is gone after sign-out, browser has {cookies:?}"
    );

    browser.quit().await;
    eprintln!(
        "browser test passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// processes

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// The test's working directory; kept (and its path printed) when the test
/// fails or `BROWSER_TEST_KEEP` is set.
struct WorkDir(Option<TempDir>);

impl WorkDir {
    fn new() -> WorkDir {
        WorkDir(Some(
            tempfile::Builder::new()
                .prefix("oidc-gateway-browser-")
                .tempdir()
                .expect("temporary directory"),
        ))
    }

    fn path(&self) -> &Path {
        self.0.as_ref().expect("directory").path()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let keep = std::thread::panicking() || std::env::var_os("BROWSER_TEST_KEEP").is_some();
        if let (true, Some(dir)) = (keep, self.0.take()) {
            eprintln!("browser test: kept {}", dir.keep().display());
        }
    }
}

/// A child process with its output in files; killed and reaped on drop, its
/// output printed when the test is failing.
struct Process {
    name: &'static str,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Process {
    fn spawn(name: &'static str, mut command: Command, dir: &Path) -> Process {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        command
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("stdout file"))
            .stderr(File::create(&stderr).expect("stderr file"));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process {
            name,
            child,
            stdout,
            stderr,
        }
    }

    fn output(&self) -> String {
        let read = |path: &Path| fs::read_to_string(path).unwrap_or_default();
        format!(
            "--- {} stdout ---\n{}--- {} stderr ---\n{}",
            self.name,
            read(&self.stdout),
            self.name,
            read(&self.stderr)
        )
    }

    /// Panics with the process's output if it has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early ({status})\n{}", self.name, self.output());
        }
    }

    /// Waits up to `limit` for the process to exit by itself.
    fn exited_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(POLL);
        }
        false
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.output());
        }
    }
}

/// `oidc-gateway demo --listen 127.0.0.1:PORT` in `dir`, without inherited
/// `OIDC_GATEWAY*` or `RUST_LOG` variables.
fn start_demo(dir: &Path, port: u16) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_oidc-gateway"));
    command
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir);
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("OIDC_GATEWAY") || text == "RUST_LOG" {
            command.env_remove(&name);
        }
    }
    Process::spawn("gateway", command, dir)
}

/// Polls `/healthz`, then `/readyz`, until both answer 200 (within [`PHASE`]).
/// The demo's certificate is self-signed: this probe, and only it, accepts it blindly.
async fn wait_for_gateway(gateway: &mut Process, origin: &str) {
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("readiness client");
    let deadline = Instant::now() + PHASE;
    for path in ["/healthz", "/readyz"] {
        let url = format!("{origin}{path}");
        loop {
            gateway.assert_running();
            let status = http.get(&url).send().await.map(|r| r.status());
            if matches!(status, Ok(s) if s == reqwest::StatusCode::OK) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{url} did not answer 200 within {PHASE:?} (last: {status:?})\n{}",
                gateway.output()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// chromedriver on a free loopback port. On drop it is asked to shut down
/// (which quits the browsers it started) before it is killed.
struct ChromeDriver {
    port: u16,
    process: Process,
}

impl ChromeDriver {
    async fn start(dir: &Path) -> ChromeDriver {
        let port = free_port();
        let mut command = Command::new(CHROMEDRIVER);
        command.arg(format!("--port={port}")).current_dir(dir);
        let mut driver = ChromeDriver {
            port,
            process: Process::spawn("chromedriver", command, dir),
        };
        let http = client();
        let url = format!("{}/status", driver.url());
        let deadline = Instant::now() + PHASE;
        loop {
            driver.process.assert_running();
            let ready = match http.get(&url).send().await {
                Ok(response) => response
                    .json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                return driver;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready within {PHASE:?}\n{}",
                driver.process.output()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // chromedriver's own `GET /shutdown` ends its sessions (and their
        // browsers); a plain request, as this runs outside the async runtime.
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                self.port
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        self.process.exited_within(Duration::from_secs(10));
    }
}

/// An HTTP client for chromedriver (loopback, no proxies).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("WebDriver client")
}

// ---------------------------------------------------------------------------
// a tiny W3C WebDriver client

/// One WebDriver session.
struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
}

impl Browser {
    async fn new_session(driver: &ChromeDriver, profile: &Path) -> Browser {
        let http = client();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "pageLoadStrategy": "normal",
            "timeouts": {"pageLoad": PHASE.as_millis() as u64, "script": 10_000, "implicit": 0},
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-proxy-server",
                    "--window-size=1280,1400",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let response = http
            .post(format!("{}/session", driver.url()))
            .json(&capabilities)
            .send()
            .await
            .expect("POST /session");
        let status = response.status();
        let body: Value = response.json().await.expect("new session answer");
        let Some(id) = body["value"]["sessionId"].as_str() else {
            panic!("new session failed ({status}): {body}");
        };
        Browser {
            session: format!("{}/session/{id}", driver.url()),
            http,
        }
    }

    /// One command; `Err` carries the WebDriver error code and message.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.session);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("{method} {path}: answer is not JSON: {e}"))?;
        let value = body["value"].clone();
        match value.get("error").and_then(Value::as_str) {
            Some(error) => Err(format!(
                "{method} {path}: {status} {error}: {}",
                value["message"].as_str().unwrap_or_default()
            )),
            None => Ok(value),
        }
    }

    async fn must(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {e}"))
    }

    async fn navigate(&self, url: &str) {
        self.must(Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn current_url(&self) -> String {
        string(self.must(Method::GET, "/url", None).await)
    }

    async fn title(&self) -> String {
        string(self.must(Method::GET, "/title", None).await)
    }

    async fn source(&self) -> String {
        string(self.must(Method::GET, "/source", None).await)
    }

    /// The element found by `using` (`css selector`, `xpath`, `link text`).
    async fn find(&self, using: &str, selector: &str) -> String {
        match self.find_optional(using, selector).await {
            Some(element) => element,
            None => panic!(
                "no element {using} {selector:?} on {} ({:?})\n{}",
                self.current_url().await,
                self.title().await,
                self.source().await
            ),
        }
    }

    async fn find_optional(&self, using: &str, selector: &str) -> Option<String> {
        let body = json!({ "using": using, "value": selector });
        match self.call(Method::POST, "/element", Some(body)).await {
            Ok(value) => match value[ELEMENT].as_str() {
                Some(element) => Some(element.to_string()),
                None => {
                    panic!("WebDriver find {using} {selector:?}: no element reference in {value}")
                }
            },
            Err(e) if e.contains("no such element") => None,
            Err(e) => panic!("WebDriver {e}"),
        }
    }

    async fn text(&self, element: &str) -> String {
        string(
            self.must(Method::GET, &format!("/element/{element}/text"), None)
                .await,
        )
    }

    async fn clear(&self, element: &str) {
        self.must(
            Method::POST,
            &format!("/element/{element}/clear"),
            Some(json!({})),
        )
        .await;
    }

    async fn send_keys(&self, element: &str, text: &str) {
        self.must(
            Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn click(&self, element: &str) {
        self.must(
            Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Names of the cookies visible to the current page.
    async fn cookie_names(&self) -> Vec<String> {
        let cookies = self.must(Method::GET, "/cookie", None).await;
        cookies
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Writes a PNG of the viewport to `path`.
    async fn save_screenshot(&self, path: &Path) {
        let png = string(self.must(Method::GET, "/screenshot", None).await);
        let png = base64::engine::general_purpose::STANDARD
            .decode(png)
            .expect("screenshot is base64");
        fs::write(path, png).expect("write screenshot");
    }

    /// Polls URL and title until `done(url, title)` holds, within [`PHASE`].
    async fn wait_page(&self, what: &str, done: impl Fn(&str, &str) -> bool) -> (String, String) {
        let deadline = Instant::now() + PHASE;
        loop {
            // While a navigation is under way, a command may fail transiently.
            let url = self.call(Method::GET, "/url", None).await.map(string);
            let title = self.call(Method::GET, "/title", None).await.map(string);
            if let (Ok(url), Ok(title)) = (&url, &title) {
                if done(url, title) {
                    return (url.clone(), title.clone());
                }
            }
            if Instant::now() >= deadline {
                let source = self.call(Method::GET, "/source", None).await;
                panic!(
                    "waited {PHASE:?} for {what}; the browser is at {url:?} titled {title:?}\n{}",
                    source.map(string).unwrap_or_else(|e| e)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls the visible text of `<body>` until `done` holds, within [`PHASE`].
    async fn wait_body_text(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PHASE;
        loop {
            let text = match self.find_optional("css selector", "body").await {
                Some(body) => self.text(&body).await,
                None => String::new(),
            };
            if done(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "waited {PHASE:?} for {what}; the browser is at {} showing:\n{text}",
                self.current_url().await
            );
            tokio::time::sleep(POLL).await;
        }
    }

    async fn quit(self) {
        self.must(Method::DELETE, "", None).await;
    }
}

fn string(value: Value) -> String {
    match value {
        Value::String(s) => s,
        other => panic!("expected a string from WebDriver, got {other}"),
    }
}
