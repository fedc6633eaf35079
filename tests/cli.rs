//! End-to-end tests of the `oidc-gateway` command line: configuration errors
//! (exit code 2, key + place named on stderr), `check`, `run` with a generated
//! self-signed certificate, `healthcheck`, SIGTERM, `--version` and `--help`.
//!
//! Every test runs the compiled binary in its own temporary working directory,
//! with an environment cleared of inherited `OIDC_GATEWAY*` variables.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a spawned gateway may take to come up or to exit.
const PROCESS_DEADLINE: Duration = Duration::from_secs(10);

/// A minimal valid configuration; `PORT` is replaced by [`config_for`].
const MINIMAL: &str = r#"[server]
listen = "127.0.0.1:PORT"
[tls]
cert = "certs/gw.crt"
key = "certs/gw.key"
self_signed = true
[oidc]
issuer = "ISSUER_URL"
client_id = "abc"
client_secret = "s3cret"
[upstream]
url = "http://127.0.0.1:9"
"#;

/// The issuer of the mock IdP this test binary shares: the development IdP,
/// started once on its own runtime (loopback only, like every test server).
fn issuer() -> &'static str {
    use std::sync::OnceLock;
    static IDP: OnceLock<(
        tokio::runtime::Runtime,
        oidc_gateway::devidp::DevIdp,
        String,
    )> = OnceLock::new();
    let (_, _, issuer) = IDP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime for the mock IdP");
        let options = oidc_gateway::devidp::DevIdpOptions {
            client_id: "abc".into(),
            client_secret: "s3cret".into(),
            ..Default::default()
        };
        let idp = runtime
            .block_on(oidc_gateway::devidp::DevIdp::start(options))
            .expect("mock IdP starts");
        let issuer = idp.issuer();
        (runtime, idp, issuer)
    });
    issuer
}

/// The minimal configuration listening on `127.0.0.1:port`.
fn config_for(port: u16) -> String {
    MINIMAL
        .replace("PORT", &port.to_string())
        .replace("ISSUER_URL", issuer())
}

/// A port that was free a moment ago (the gateway must bind it itself).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Writes `contents` to `dir/rel` (creating parent directories); returns the absolute path.
fn write(dir: &Path, rel: &str, contents: &str) -> PathBuf {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent directory");
    }
    fs::write(&path, contents).expect("write file");
    path
}

/// The gateway binary with `dir` as working directory and no inherited
/// `OIDC_GATEWAY*` (or `RUST_LOG`) variables.
fn gateway(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oidc-gateway"));
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .env_remove("RUST_LOG");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OIDC_GATEWAY") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs a command that is expected to finish on its own (`check`, `--help`, ...).
fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("run oidc-gateway")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts exit code 0, showing what the command printed otherwise.
fn assert_succeeded(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(out), stderr(out));
}

/// Asserts a configuration error: exit code 2 and every `needle` on stderr.
fn assert_config_error(out: &Output, needles: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit 2; stderr:\n{err}\nstdout:\n{}",
        stdout(out)
    );
    for needle in needles {
        assert!(
            err.contains(needle),
            "stderr should contain {needle:?}:\n{err}"
        );
    }
    err
}

/// A gateway process that is killed (and reaped) when dropped. Its stdout and
/// stderr go to files in the working directory so a full pipe never blocks it.
struct Running {
    child: Child,
    dir: PathBuf,
}

impl Running {
    /// Starts `cmd` (a `run`), logging to `gateway.out` / `gateway.err` in `dir`.
    fn spawn(mut cmd: Command, dir: &Path) -> Running {
        let out = fs::File::create(dir.join("gateway.out")).expect("create gateway.out");
        let err = fs::File::create(dir.join("gateway.err")).expect("create gateway.err");
        let child = cmd
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn oidc-gateway");
        Running {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// What the process wrote so far, for failure messages.
    fn logs(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!(
            "stdout:\n{}\nstderr:\n{}",
            read("gateway.out"),
            read("gateway.err")
        )
    }

    /// Polls until `addr` accepts TCP connections; panics if the process exits
    /// or [`PROCESS_DEADLINE`] passes first.
    fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + PROCESS_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("gateway exited early with {status}\n{}", self.logs());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not listen on {addr} in time\n{}",
                self.logs()
            );
            // Waiting on an external process to come up.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) for the process to exit on its own.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PROCESS_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit in time\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `run` with the config file `dir/config.toml`, expected to exit by itself;
/// returns its exit status and stderr.
fn run_expecting_exit(dir: &Path) -> (ExitStatus, String) {
    let mut cmd = gateway(dir);
    cmd.arg("run").arg("--config").arg(dir.join("config.toml"));
    let mut gw = Running::spawn(cmd, dir);
    let status = gw.wait_exit();
    let err = fs::read_to_string(dir.join("gateway.err")).unwrap_or_default();
    (status, err)
}

/// Starts `run` with `dir/config.toml` (listening on `port`) and waits until it listens.
fn start(dir: &Path, port: u16) -> Running {
    let mut cmd = gateway(dir);
    cmd.arg("run").arg("--config").arg(dir.join("config.toml"));
    let mut gw = Running::spawn(cmd, dir);
    gw.wait_listening(SocketAddr::from(([127, 0, 0, 1], port)));
    gw
}

/// `healthcheck` (plus `extra` args) against the gateway configured in `dir/config.toml`.
fn healthcheck(dir: &Path, extra: &[&str]) -> Output {
    output(
        gateway(dir)
            .arg("healthcheck")
            .args(extra)
            .arg("--config")
            .arg(dir.join("config.toml")),
    )
}

/// `check --config dir/<rel>`.
fn check(dir: &Path, rel: &str) -> Output {
    output(gateway(dir).arg("check").arg("--config").arg(dir.join(rel)))
}

/// `check --config dir/config.toml` with the environment variable `name=value`.
fn check_with_env(dir: &Path, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Output {
    output(
        gateway(dir)
            .arg("check")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env(name, value),
    )
}

/// An HTTPS client that trusts only `cert_pem`, resolving `names` to `addr`.
fn pinned_client(cert_pem: &[u8], names: &[&str], addr: SocketAddr) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(cert_pem).expect("generated cert is PEM"),
        )
        .timeout(Duration::from_secs(5));
    for name in names {
        builder = builder.resolve(name, addr);
    }
    builder.build().expect("build reqwest client")
}

// ---------------------------------------------------------------- config errors

#[test]
fn unknown_key_in_file_exits_2_naming_key_and_file() {
    let dir = TempDir::new().unwrap();
    let text = config_for(8443).replace("[server]\n", "[server]\nlistn = \"127.0.0.1:1\"\n");
    write(dir.path(), "conf/gateway-test.toml", &text);
    let err = assert_config_error(
        &check(dir.path(), "conf/gateway-test.toml"),
        &["listn", "gateway-test.toml"],
    );
    // The key is named with its section.
    assert!(
        err.contains("`server.listn`"),
        "stderr should name server.listn:\n{err}"
    );
    // The file is named by its path (figment shows it relative to the working directory).
    assert!(
        err.contains("conf/gateway-test.toml")
            || err.contains(&*dir.path().join("conf/gateway-test.toml").to_string_lossy()),
        "stderr should name the file path:\n{err}"
    );
}

#[test]
fn wrong_value_type_exits_2_naming_key() {
    let dir = TempDir::new().unwrap();
    let maybe = config_for(8443).replace("self_signed = true", "self_signed = \"maybe\"");
    write(dir.path(), "config.toml", &maybe);
    assert_config_error(
        &check(dir.path(), "config.toml"),
        &["tls.self_signed", "config.toml"],
    );

    let lots = config_for(8443).replace("[server]\n", "[server]\nmax_header_bytes = \"lots\"\n");
    write(dir.path(), "config.toml", &lots);
    assert_config_error(
        &check(dir.path(), "config.toml"),
        &["server.max_header_bytes", "config.toml"],
    );
}

#[test]
fn missing_config_file_exits_2_naming_path_via_flag_and_env() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("does-not-exist.toml");
    let missing_str = missing.to_string_lossy().into_owned();

    let out = output(
        gateway(dir.path())
            .arg("check")
            .arg("--config")
            .arg(&missing),
    );
    assert_config_error(&out, &[&missing_str]);

    let out = output(
        gateway(dir.path())
            .arg("check")
            .env("OIDC_GATEWAY_CONFIG", &missing),
    );
    assert_config_error(&out, &[&missing_str]);
}

#[test]
fn bad_urls_exit_2_naming_the_key() {
    let dir = TempDir::new().unwrap();
    let cases = [
        (
            "upstream.url",
            "url = \"http://127.0.0.1:9\"",
            "url = \"ftp://x\"",
        ),
        ("oidc.issuer", issuer(), "http://idp.example.com/v2.0"),
        (
            "oidc.issuer",
            issuer(),
            "https://login.microsoftonline.com/<tenant-id>/v2.0",
        ),
    ];
    for (key, from, to) in cases {
        write(
            dir.path(),
            "config.toml",
            &config_for(8443).replace(from, to),
        );
        assert_config_error(&check(dir.path(), "config.toml"), &[key, "config.toml"]);
    }
}

#[test]
fn unreadable_certificate_exits_2_naming_tls_cert() {
    let dir = TempDir::new().unwrap();
    let port = free_port();
    let text = config_for(port).replace("self_signed = true", "self_signed = false");
    write(dir.path(), "config.toml", &text);
    write(dir.path(), "certs/gw.crt", "this is not a certificate\n");
    write(dir.path(), "certs/gw.key", "neither is this a key\n");
    let (status, err) = run_expecting_exit(dir.path());
    assert_eq!(status.code(), Some(2), "stderr:\n{err}");
    assert!(
        err.contains("tls.cert") && err.contains("certs/gw.crt"),
        "stderr:\n{err}"
    );
}

#[test]
fn lone_key_file_exits_2_and_is_not_overwritten() {
    let dir = TempDir::new().unwrap();
    let port = free_port();
    write(dir.path(), "config.toml", &config_for(port));
    let original =
        "-----BEGIN PRIVATE KEY-----\nnot really a key, but ours\n-----END PRIVATE KEY-----\n";
    let key = write(dir.path(), "certs/gw.key", original);
    let (status, err) = run_expecting_exit(dir.path());
    assert_eq!(status.code(), Some(2), "stderr:\n{err}");
    assert!(
        err.contains("certs/gw.key"),
        "stderr should name the present key file:\n{err}"
    );
    assert_eq!(
        fs::read_to_string(&key).unwrap(),
        original,
        "the key file was modified"
    );
    assert!(
        !dir.path().join("certs/gw.crt").exists(),
        "a certificate was created next to a foreign key"
    );
}

#[test]
fn env_override_wins_and_env_errors_name_the_variable() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "config.toml", &config_for(8443));

    // A valid override replaces the file's value.
    let out = check_with_env(dir.path(), "OIDC_GATEWAY__SERVER__LISTEN", "127.0.0.1:7443");
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("127.0.0.1:7443") && !text.contains("127.0.0.1:8443"),
        "stdout:\n{text}"
    );

    // An invalid override is reported against the variable, not the file.
    let out = check_with_env(dir.path(), "OIDC_GATEWAY__SERVER__LISTEN", "nonsense");
    assert_config_error(&out, &["server.listen", "OIDC_GATEWAY__SERVER__LISTEN"]);
}

#[test]
fn near_miss_environment_variable_exits_2_with_the_right_spelling() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "config.toml", &config_for(8443));
    // One underscore after the prefix: meant as the client secret, read by nothing.
    let out = check_with_env(dir.path(), "OIDC_GATEWAY_OIDC__CLIENT_SECRET", "other");
    assert_config_error(
        &out,
        &[
            "environment variable OIDC_GATEWAY_OIDC__CLIENT_SECRET is not read",
            "rename it OIDC_GATEWAY__OIDC__CLIENT_SECRET",
        ],
    );
    assert!(!stderr(&out).contains("other"), "printed the value");
}

// ---------------------------------------------------------------- *_file secrets

/// The minimal config without `client_secret`, written to `dir/config.toml`.
fn write_config_without_secret(dir: &Path) {
    let text = config_for(8443).replace("client_secret = \"s3cret\"\n", "");
    assert!(!text.contains("client_secret"));
    write(dir, "config.toml", &text);
}

#[test]
fn client_secret_file_is_read_and_never_printed() {
    let dir = TempDir::new().unwrap();
    write_config_without_secret(dir.path());
    let secret = write(dir.path(), "secrets/client_secret", "topsecret\n");

    // Without the secret the config is incomplete: proves the file is what satisfies it.
    let out = check(dir.path(), "config.toml");
    assert_config_error(&out, &["oidc.client_secret"]);

    let out = check_with_env(
        dir.path(),
        "OIDC_GATEWAY__OIDC__CLIENT_SECRET_FILE",
        &secret,
    );
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    assert!(
        !stdout(&out).contains("topsecret") && !stderr(&out).contains("topsecret"),
        "check printed the secret:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn client_secret_and_client_secret_file_together_exit_2() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "config.toml", &config_for(8443));
    let secret = write(dir.path(), "secrets/client_secret", "topsecret\n");
    let out = check_with_env(
        dir.path(),
        "OIDC_GATEWAY__OIDC__CLIENT_SECRET_FILE",
        &secret,
    );
    let err = assert_config_error(
        &out,
        &[
            "oidc.client_secret_file",
            "OIDC_GATEWAY__OIDC__CLIENT_SECRET_FILE",
        ],
    );
    assert!(
        !err.contains("topsecret") && !err.contains("s3cret"),
        "stderr shows a secret:\n{err}"
    );
}

#[test]
fn missing_client_secret_file_exits_2() {
    let dir = TempDir::new().unwrap();
    write_config_without_secret(dir.path());
    let missing = dir.path().join("secrets/nowhere");
    let out = check_with_env(
        dir.path(),
        "OIDC_GATEWAY__OIDC__CLIENT_SECRET_FILE",
        &missing,
    );
    assert_config_error(
        &out,
        &["oidc.client_secret_file", &missing.to_string_lossy()],
    );
}

// ---------------------------------------------------------------- check

/// `check` of the minimal configuration plus `extra`, which must succeed: its output.
fn checked(dir: &Path, extra: &str) -> String {
    write(dir, "config.toml", &format!("{}{extra}", config_for(8443)));
    let out = check(dir, "config.toml");
    assert_succeeded(&out);
    stdout(&out)
}

#[test]
fn check_states_who_gets_in_default_every_user_of_the_tenant() {
    let dir = TempDir::new().unwrap();
    let text = checked(dir.path(), "");
    assert!(
        text.contains(
            "Who gets in ([access]): every user of the tenant in oidc.issuer who signs in"
        ),
        "{text}"
    );

    // With a rule, check names it instead of the default.
    let text = checked(dir.path(), "[access]\ngroups = [\"g-admins\"]\n");
    assert!(
        text.contains("Who gets in ([access]): signed-in users matching all of: groups g-admins")
            && !text.contains("every user of the tenant"),
        "{text}"
    );
    // Group rules: users beyond the token's 200 groups are read from Graph, with User.Read.
    assert!(
        text.contains("oidc.graph_url")
            && text.contains("https://graph.microsoft.com (groups of users in more than 200 groups; needs User.Read, requested)"),
        "{text}"
    );
}

#[test]
fn check_warns_what_identity_settings_need_from_entra() {
    let dir = TempDir::new().unwrap();
    let text = checked(dir.path(), "");
    assert!(
        text.contains("headers.user_claim")
            && text.contains("preferred_username fills X-Forwarded-User")
            && !text.contains("WARNING: address rules"),
        "{text}"
    );
    let text = checked(
        dir.path(),
        "[headers]\nuser_claim = \"email\"\n[access]\nemail_domains = [\"contoso.com\"]\n",
    );
    assert!(
        text.contains("WARNING: headers.user_claim = \"email\": only tokens whose email carries xms_edov: true")
            && text.contains("WARNING: address rules (email_domains, users with '@') read the UPN"),
        "{text}"
    );
}

#[test]
fn check_valid_config_prints_redirect_uri_and_creates_nothing() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "config.toml", &config_for(8443));
    let out = check(dir.path(), "config.toml");
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("Redirect URI"),
        "no redirect URI section:\n{text}"
    );
    let redirect = text
        .lines()
        .find(|l| l.trim_start().starts_with("https://localhost"))
        .unwrap_or_else(|| panic!("no redirect URI line:\n{text}"));
    assert!(
        redirect
            .trim()
            .starts_with("https://localhost:8443/api/oidc/callback"),
        "{redirect}"
    );
    assert!(
        text.contains("self-signed pair would be created"),
        "stdout:\n{text}"
    );
    assert!(
        !dir.path().join("certs/gw.crt").exists(),
        "check created the certificate"
    );
    assert!(
        !dir.path().join("certs/gw.key").exists(),
        "check created the key"
    );
}

// ---------------------------------------------------------------- run

#[tokio::test]
async fn run_creates_self_signed_pair_valid_for_loopback_names() {
    let dir = TempDir::new().unwrap();
    let port = free_port();
    write(dir.path(), "config.toml", &config_for(port));
    let _gw = start(dir.path(), port);

    let cert = dir.path().join("certs/gw.crt");
    let key = dir.path().join("certs/gw.key");
    assert!(
        cert.is_file() && key.is_file(),
        "the self-signed pair was not created"
    );
    let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key mode is {mode:o}");

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let client = pinned_client(&fs::read(&cert).unwrap(), &["localhost"], addr);
    for url in [
        format!("https://localhost:{port}/healthz"),
        format!("https://127.0.0.1:{port}/healthz"),
    ] {
        let response = client
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
        assert_eq!(response.status(), reqwest::StatusCode::OK, "GET {url}");
    }
}

#[tokio::test]
async fn self_signed_cert_includes_public_url_host() {
    let dir = TempDir::new().unwrap();
    let port = free_port();
    let text = config_for(port).replace(
        "[server]\n",
        "[server]\npublic_url = \"https://console.example.test\"\n",
    );
    write(dir.path(), "config.toml", &text);
    let _gw = start(dir.path(), port);

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let pem = fs::read(dir.path().join("certs/gw.crt")).unwrap();
    let client = pinned_client(
        &pem,
        &["console.example.test", "elsewhere.example.test"],
        addr,
    );
    let ok = client
        .get(format!("https://console.example.test:{port}/healthz"))
        .send()
        .await
        .expect("public_url host must be a SAN");
    assert_eq!(ok.status(), reqwest::StatusCode::OK);
    // Control: the client really checks names, so the success above means something.
    let wrong = client
        .get(format!("https://elsewhere.example.test:{port}/healthz"))
        .send()
        .await;
    let e = wrong.expect_err("a name outside the certificate was accepted");
    assert!(
        format!("{e:?}").contains("NotValidForName"),
        "failed for another reason: {e:?}"
    );
}

#[tokio::test]
async fn relative_paths_follow_the_config_file_from_another_working_directory() {
    let conf = TempDir::new().unwrap(); // holds config.toml, its secret and (later) certs/
    let elsewhere = TempDir::new().unwrap(); // the working directory
    let port = free_port();
    let text = config_for(port).replace(
        "client_secret = \"s3cret\"\n",
        "client_secret_file = \"secrets/client_secret\"\n",
    );
    write(conf.path(), "config.toml", &text);
    write(conf.path(), "secrets/client_secret", "s3cret\n");

    // `check --config ../<conf>/config.toml`: a relative config path, from the other directory.
    let conf_name = conf
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let relative_config = format!("../{conf_name}/config.toml");
    let out = output(
        gateway(elsewhere.path())
            .arg("check")
            .arg("--config")
            .arg(&relative_config),
    );
    assert_succeeded(&out);

    let mut cmd = gateway(elsewhere.path());
    cmd.arg("run").arg("--config").arg(&relative_config);
    let mut gw = Running::spawn(cmd, elsewhere.path());
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    gw.wait_listening(addr);
    let cert = conf.path().join("certs/gw.crt");
    assert!(
        cert.is_file() && conf.path().join("certs/gw.key").is_file(),
        "the self-signed pair is not next to the config file\n{}",
        gw.logs()
    );
    assert!(
        !elsewhere.path().join("certs").exists(),
        "certs/ was created in the working directory"
    );
    // The listener serves exactly that pair, and the healthcheck (pinned to tls.cert) finds it.
    let client = pinned_client(&fs::read(&cert).unwrap(), &["localhost"], addr);
    let response = client
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .expect("TLS with the certificate next to the config file");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let out = output(
        gateway(elsewhere.path())
            .arg("healthcheck")
            .arg("--config")
            .arg(&relative_config),
    );
    assert_succeeded(&out);
}

#[test]
fn healthcheck_exits_0_when_live_and_ready_and_1_when_down() {
    let dir = TempDir::new().unwrap();
    let port = free_port();
    write(dir.path(), "config.toml", &config_for(port));
    let gw = start(dir.path(), port);

    let out = healthcheck(dir.path(), &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "healthcheck: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("/healthz"), "{}", stdout(&out));
    // Ready once the gateway has read the IdP's metadata (in the background).
    let deadline = Instant::now() + PROCESS_DEADLINE;
    let out = loop {
        let out = healthcheck(dir.path(), &["--ready"]);
        if out.status.code() == Some(0) || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        out.status.code(),
        Some(0),
        "healthcheck --ready: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("/readyz"), "{}", stdout(&out));

    drop(gw); // kills and reaps: nothing listens on the port any more (the certificate stays)
    let out = healthcheck(dir.path(), &["--timeout", "2s"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{err}");
    assert!(
        err.contains("healthcheck failed") && err.contains(&port.to_string()),
        "stderr:\n{err}"
    );
}

#[test]
fn healthcheck_ready_fails_while_the_idp_is_unreachable() {
    let dir = TempDir::new().unwrap();
    let port = free_port();
    let nowhere = format!("http://127.0.0.1:{}/tenant/v2.0", free_port());
    write(
        dir.path(),
        "config.toml",
        &config_for(port).replace(issuer(), &nowhere),
    );
    let _gw = start(dir.path(), port);
    assert_eq!(healthcheck(dir.path(), &[]).status.code(), Some(0), "alive");
    let out = healthcheck(dir.path(), &["--ready"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "not ready without its IdP: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("503"), "{}", stderr(&out));
}

#[test]
fn check_reports_an_unreachable_identity_provider() {
    let dir = TempDir::new().unwrap();
    let nowhere = format!("http://127.0.0.1:{}/tenant/v2.0", free_port());
    write(
        dir.path(),
        "config.toml",
        &config_for(8443).replace(issuer(), &nowhere),
    );
    let out = check(dir.path(), "config.toml");
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("problem: cannot fetch discovery document"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_prints_what_the_identity_provider_says() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "config.toml", &config_for(8443));
    let out = check(dir.path(), "config.toml");
    assert_succeeded(&out);
    let text = stdout(&out);
    assert!(
        text.contains(&format!("issuer enforced         {}", issuer())),
        "{text}"
    );
    assert!(text.contains("client_secret_post"), "{text}");
    assert!(
        text.contains("https://localhost:8443/api/oidc/callback"),
        "{text}"
    );
}

#[test]
fn sigterm_stops_gateway_with_exit_0() {
    let dir = TempDir::new().unwrap();
    let port = free_port();
    write(dir.path(), "config.toml", &config_for(port));
    let mut gw = start(dir.path(), port);
    // The listener is up; make sure the process is serving, not just bound.
    let out = healthcheck(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(gw.child.id().to_string())
        .status()
        .expect("run kill");
    assert!(killed.success());
    let status = gw.wait_exit();
    assert_eq!(status.code(), Some(0), "status {status}\n{}", gw.logs());
}

/// A self-signed pair for localhost valid until `not_after`: (certificate PEM, key PEM).
fn pair_valid_until(not_after: time::OffsetDateTime) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("params");
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = not_after;
    let cert = params.self_signed(&key).expect("self-signed");
    (cert.pem(), key.serialize_pem())
}

#[test]
fn sighup_reloads_the_certificate_files() {
    let dir = TempDir::new().unwrap();
    let port = free_port();
    let config = config_for(port).replace(
        "self_signed = true",
        "self_signed = true\nreload_interval = \"0s\"",
    );
    write(dir.path(), "config.toml", &config);
    let mut gw = start(dir.path(), port);
    assert_succeeded(&healthcheck(dir.path(), &[]));

    // New files on disk: `healthcheck` pins the certificate in tls.cert, so it
    // fails until the gateway serves the new pair (no file checks: only SIGHUP).
    let (cert, key) = pair_valid_until(time::OffsetDateTime::now_utc() + time::Duration::days(90));
    write(dir.path(), "certs/gw.key", &key);
    write(dir.path(), "certs/gw.crt", &cert);
    let before = healthcheck(dir.path(), &[]);
    assert_eq!(before.status.code(), Some(1), "{}", stdout(&before));
    assert!(
        stderr(&before).contains("different certificate"),
        "{}",
        stderr(&before)
    );

    let hup = Command::new("kill")
        .arg("-HUP")
        .arg(gw.child.id().to_string())
        .status()
        .expect("run kill");
    assert!(hup.success());
    let deadline = Instant::now() + PROCESS_DEADLINE;
    loop {
        if let Some(status) = gw.child.try_wait().expect("try_wait") {
            panic!(
                "SIGHUP must not stop the gateway; it exited with {status}\n{}",
                gw.logs()
            );
        }
        let probe = healthcheck(dir.path(), &[]);
        if probe.status.code() == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served after SIGHUP\n{}\n{}",
            stderr(&probe),
            gw.logs()
        );
        // Waiting on another process to handle its signal.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        gw.logs().contains("TLS certificate reloaded"),
        "{}",
        gw.logs()
    );
}

#[test]
fn check_warns_about_a_certificate_that_expires_within_30_days() {
    let dir = TempDir::new().unwrap();
    write(dir.path(), "config.toml", &config_for(8443));
    let (cert, key) = pair_valid_until(
        time::OffsetDateTime::now_utc() + time::Duration::days(10) + time::Duration::hours(1),
    );
    write(dir.path(), "certs/gw.key", &key);
    write(dir.path(), "certs/gw.crt", &cert);
    let out = check(dir.path(), "config.toml");
    assert_succeeded(&out);
    assert!(
        stderr(&out).contains("certs/gw.crt: the certificate expires in 10 days"),
        "{}",
        stderr(&out)
    );

    // 60 days left: no warning.
    let (cert, key) = pair_valid_until(time::OffsetDateTime::now_utc() + time::Duration::days(60));
    write(dir.path(), "certs/gw.key", &key);
    write(dir.path(), "certs/gw.crt", &cert);
    let out = check(dir.path(), "config.toml");
    assert_succeeded(&out);
    assert!(!stderr(&out).contains("expires"), "{}", stderr(&out));
}

// ---------------------------------------------------------------- dev-idp

#[test]
fn dev_idp_prints_oidc_settings_that_check_accepts_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let dir = TempDir::new().unwrap();
    let mut idp = gateway(dir.path())
        .args(["dev-idp", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dev-idp");
    let mut lines = BufReader::new(idp.stdout.take().expect("stdout")).lines();
    let printed: Vec<String> = (0..6)
        .map(|_| lines.next().expect("a line").expect("utf-8"))
        .collect();
    assert!(printed[0].contains("NOT Microsoft"), "{printed:?}");
    assert_eq!(printed[1], "[oidc]");
    let oidc = printed[1..].join("\n");
    write(
        dir.path(),
        "config.toml",
        &format!("[server]\nlisten = \"127.0.0.1:8443\"\n{oidc}\n[upstream]\nurl = \"http://127.0.0.1:9\"\n"),
    );
    // `check` reads discovery and JWKS from the printed issuer, as `run` would.
    let out = check(dir.path(), "config.toml");
    assert_succeeded(&out);
    let issuer = printed[2]
        .strip_prefix("issuer = \"")
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("issuer line");
    assert!(
        stdout(&out).contains(&format!("issuer enforced         {issuer}")),
        "{}",
        stdout(&out)
    );

    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(idp.id().to_string())
        .status()
        .expect("run kill");
    assert!(killed.success());
    let status = idp.wait().expect("dev-idp exits");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn dev_idp_refuses_a_non_loopback_address() {
    let dir = TempDir::new().unwrap();
    let out = output(gateway(dir.path()).args(["dev-idp", "--listen", "0.0.0.0:0"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("loopback"), "{}", stderr(&out));
}

// ---------------------------------------------------------------- --version, --help

#[test]
fn version_and_help_describe_the_command() {
    let dir = TempDir::new().unwrap();
    let out = output(gateway(dir.path()).arg("--version"));
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        stdout(&out)
    );

    let out = output(gateway(dir.path()).arg("--help"));
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    assert!(help.contains("Examples") && help.contains("demo"), "{help}");
}

#[test]
fn check_prints_the_route_table_with_each_routes_upstream() {
    let dir = TempDir::new().unwrap();
    let config = format!(
        "{}\n[upstreams.grafana]\nurl = \"http://127.0.0.1:3000\"\nmax_connections = 7\n\
         [[routes]]\npath = \"/grafana/**\"\nupstream = \"grafana\"\n\
         [[routes]]\npath = \"/old/**\"\naction = \"deny\"\n\
         [rustdesk]\nenabled = true\nrelay_server = \"http://127.0.0.1:21119\"\n",
        config_for(8443)
    );
    write(dir.path(), "config.toml", &config);
    let out = check(dir.path(), "config.toml");
    assert_succeeded(&out);
    let text = stdout(&out);
    let line_of = |path: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(path))
            .unwrap_or_else(|| panic!("no route line for {path}:\n{text}"))
            .to_string()
    };
    assert!(
        line_of("/grafana/**").trim_end().ends_with("grafana"),
        "{text}"
    );
    assert!(
        line_of("/ws/relay").trim_end().ends_with("rustdesk_relay"),
        "{text}"
    );
    assert!(
        line_of("/api/heartbeat").trim_end().ends_with("default"),
        "{text}"
    );
    assert!(line_of("/old/**").contains("deny"), "{text}");
    // The preset's relay route comes before the console's own WebSocket paths.
    let relay = text.find("rustdesk_relay\n").expect("relay route");
    let heartbeat = text.find("/api/heartbeat").expect("heartbeat route");
    assert!(relay < heartbeat, "{text}");
    assert!(text.contains("max_connections 7 per worker"), "{text}");
    // hbbs is not configured: check says what will not work.
    assert!(
        text.contains("WARNING: rustdesk.id_server is not set: /ws/id goes to the console"),
        "{text}"
    );
    assert!(!text.contains("rustdesk.relay_server is not set"), "{text}");
}

#[test]
fn route_upstream_errors_name_the_route_and_key() {
    let dir = TempDir::new().unwrap();
    let base = config_for(8443);
    let cases = [
        (
            "[[routes]]\npath = \"/a\"\n[[routes]]\npath = \"/b/**\"\nupstream = \"nowhere\"\n",
            vec![
                "routes[1].upstream",
                "\"nowhere\" is not an upstream",
                "known: default",
            ],
        ),
        (
            "[upstreams.default]\nurl = \"http://127.0.0.1:3000\"\n",
            vec!["upstreams.default", "already the upstream of `upstream`"],
        ),
        (
            "[upstreams.rustdesk_id]\nurl = \"http://127.0.0.1:3000\"\n\
             [rustdesk]\nenabled = true\nid_server = \"http://127.0.0.1:21118\"\n",
            vec![
                "upstreams.rustdesk_id",
                "already the upstream of `rustdesk.id_server`",
            ],
        ),
        (
            "[upstreams.Grafana]\nurl = \"http://127.0.0.1:3000\"\n",
            vec!["upstreams.Grafana", "lower-case"],
        ),
        (
            "[upstreams.grafana]\nurl = \"http://127.0.0.1:3000/grafana\"\n",
            vec!["upstreams.grafana.url", "path"],
        ),
        (
            "[upstreams.grafana]\nurl = \"http://127.0.0.1:3000\"\nmax_connections = 0\n",
            vec!["upstreams.grafana.max_connections"],
        ),
        (
            "[[routes]]\npath = \"/x\"\naction = \"deny\"\nupstream = \"default\"\n",
            vec!["routes[0].upstream", "deny"],
        ),
        (
            "[rustdesk]\nid_server = \"http://127.0.0.1:21118\"\n",
            vec!["rustdesk.id_server", "rustdesk.enabled"],
        ),
    ];
    for (extra, needles) in cases {
        write(dir.path(), "config.toml", &format!("{base}\n{extra}"));
        assert_config_error(&check(dir.path(), "config.toml"), &needles);
    }
}

#[test]
fn a_named_upstream_is_reachable_by_environment_override() {
    let dir = TempDir::new().unwrap();
    let config = format!(
        "{}\n[upstreams.grafana]\nurl = \"http://127.0.0.1:3000\"\n",
        config_for(8443)
    );
    write(dir.path(), "config.toml", &config);
    let out = output(
        gateway(dir.path())
            .arg("check")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .env(
                "OIDC_GATEWAY__UPSTREAMS__GRAFANA__URL",
                "http://127.0.0.1:3999",
            ),
    );
    assert_succeeded(&out);
    let text = stdout(&out);
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("grafana") && l.contains("127.0.0.1:3999")),
        "{text}"
    );
}
