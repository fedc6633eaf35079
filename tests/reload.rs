//! SIGHUP re-reads the configuration (`oidc-gateway run`, a real process):
//! access rules, routes and upstreams change for the next request while
//! sessions survive; a broken file changes nothing and says why; keys that
//! need a restart are named. Each test waits for the reload by polling the
//! process's `config_reloads_total` metric, never by sleeping.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::process::{free_port, GatewayProcess};
use common::{config_text, echo_upstream, follow_login, idp_options, upstream, Extra};
use http::{Request, Response};
use hyper::body::Incoming;
use oidc_gateway::devidp::DevIdp;
use oidc_gateway::full_body;
use tempfile::TempDir;

const SECRET: &str = "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";

/// A gateway process with metrics on, its IdP and a signed-in browser.
struct Running {
    process: GatewayProcess,
    site: Site,
    browser: reqwest::Client,
}

/// What the configuration file is made from.
struct Site {
    port: u16,
    metrics_port: u16,
    idp: DevIdp,
    upstream: SocketAddr,
    dir: TempDir,
}

impl Site {
    /// The configuration file's text with `extra` sections appended.
    fn config(&self, extra: &str) -> String {
        let extra = Extra {
            listen: Some(format!("127.0.0.1:{}", self.port)),
            session: format!("secret = \"{SECRET}\""),
            rest: format!(
                "[metrics]\nlisten = \"127.0.0.1:{}\"\n{extra}",
                self.metrics_port
            ),
            ..Default::default()
        };
        config_text(
            &self.dir,
            &format!("http://{}", self.upstream),
            &self.idp.issuer(),
            &extra,
        )
    }
}

impl Running {
    async fn start() -> Running {
        // The in-process servers bind first: a port free_port() just released
        // could otherwise be handed to one of them.
        let idp = DevIdp::start(idp_options()).await.expect("IdP starts");
        let upstream = echo_upstream().await;
        let site = Site {
            port: free_port(),
            metrics_port: free_port(),
            idp,
            upstream,
            dir: TempDir::new().expect("tempdir"),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], site.port));
        let mut process = GatewayProcess::spawn(site.dir.path(), addr, &site.config(""));
        process.wait_listening().await;
        let cert = std::fs::read(site.dir.path().join("gateway.crt")).expect("certificate");
        let browser = common::client_builder(&cert, SocketAddr::from(([127, 0, 0, 1], 0)))
            .cookie_store(true)
            .build()
            .expect("client");
        let running = Running {
            process,
            site,
            browser,
        };
        running.wait_ready().await;
        let start = running
            .browser
            .get(running.url("/.gateway/sign_in?rd=%2F"))
            .send()
            .await
            .expect("sign_in");
        let signed_in = follow_login(&running.browser, start).await;
        assert_eq!(signed_in.status(), 303, "signed in");
        running
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.site.port)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.browser
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.get("/readyz").await.status() != 200 {
            assert!(
                Instant::now() < deadline,
                "not ready\n{}",
                self.process.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `config_reloads_total{outcome=…}` from the process's metrics endpoint.
    async fn reloads(&self, outcome: &str) -> u64 {
        let text = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .get(format!(
                "http://127.0.0.1:{}/metrics",
                self.site.metrics_port
            ))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body");
        let series = format!("oidc_gateway_config_reloads_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&series))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    /// Writes `extra` into the config file, sends SIGHUP and waits until the
    /// process counted a reload with `outcome`.
    async fn reload(&self, extra: &str, outcome: &str) {
        let before = self.reloads(outcome).await;
        let file = self.site.dir.path().join("config.toml");
        std::fs::write(file, self.site.config(extra)).expect("write");
        self.process.hangup();
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.reloads(outcome).await == before {
            assert!(
                Instant::now() < deadline,
                "no {outcome} reload counted\n{}",
                self.process.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

#[tokio::test]
async fn a_tightened_rule_refuses_a_signed_in_user_on_the_next_request_without_a_new_sign_in() {
    let gw = Running::start().await;
    assert_eq!(
        gw.get("/app").await.status(),
        200,
        "every user of the tenant"
    );

    gw.reload("[access]\nusers = [\"bob@contoso.example\"]", "applied")
        .await;
    let refused = gw.get("/app").await;
    assert_eq!(refused.status(), 403, "the new rule, on the same session");
    let body: serde_json::Value = refused.json().await.expect("JSON");
    assert_eq!(body["error"], "forbidden");
    assert_eq!(
        body["user"],
        common::USER,
        "the session survived the reload: {body}"
    );

    // And loosened again: the same session passes, no sign-in in between.
    gw.reload("", "applied").await;
    assert_eq!(gw.get("/app").await.status(), 200);
}

#[tokio::test]
async fn a_broken_file_keeps_the_running_configuration_and_says_why() {
    let gw = Running::start().await;
    gw.reload("[access]\nusers = 5", "rejected").await;
    assert_eq!(
        gw.get("/app").await.status(),
        200,
        "the running configuration stays"
    );
    let logs = gw.process.logs();
    assert!(
        logs.contains("configuration reload refused") && logs.contains("access.users"),
        "the error names the key:\n{logs}"
    );
    // A valid file afterwards is applied as usual.
    gw.reload("[access]\nusers = [\"bob@contoso.example\"]", "applied")
        .await;
    assert_eq!(gw.get("/app").await.status(), 403);
}

#[tokio::test]
async fn a_new_route_to_a_new_upstream_takes_effect_and_restart_keys_are_named() {
    let gw = Running::start().await;
    let second = upstream(|_request: Request<Incoming>| async {
        Response::new(full_body("second upstream"))
    })
    .await;
    let before: serde_json::Value = gw.get("/reports/x").await.json().await.expect("echo");
    assert_eq!(before["uri"], "/reports/x", "the default upstream (echo)");

    // [gateway] prefix needs a restart: named in a warning, the rest applies.
    let extra = format!(
        "[upstreams.reports]\nurl = \"http://{second}\"\n\
         [[routes]]\npath = \"/reports/**\"\nupstream = \"reports\"\n\
         [gateway]\nprefix = \"/.gw\""
    );
    gw.reload(&extra, "applied").await;
    let answer = gw.get("/reports/x").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.expect("body"), "second upstream");
    assert_eq!(
        gw.get("/other").await.status(),
        200,
        "other paths still go to the default upstream"
    );
    let logs = gw.process.logs();
    assert!(
        logs.contains("need a restart") && logs.contains("gateway.prefix"),
        "the restart-only key is named:\n{logs}"
    );
    assert_eq!(
        gw.get("/.gateway/me").await.status(),
        200,
        "gateway.prefix keeps its running value until a restart"
    );
}
