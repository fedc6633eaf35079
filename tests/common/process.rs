//! Real processes for the session tests: the gateway binary (restarts, two
//! replicas) and `redis-server`, each on a free loopback port in a temporary
//! directory, stopped when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a process may take to come up or to exit.
const DEADLINE: Duration = Duration::from_secs(15);

/// A port that was free a moment ago (the server binds it itself).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Polls `ready` until it holds; panics with `what` (and `logs`) after [`DEADLINE`].
/// Only for waiting on another process, which cannot signal us.
async fn poll_until(what: &str, logs: impl Fn() -> String, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} in time\n{}", logs());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A gateway process (`oidc-gateway run`) with its own working directory.
pub struct GatewayProcess {
    child: Child,
    pub dir: PathBuf,
    pub addr: SocketAddr,
}

impl GatewayProcess {
    /// Starts `oidc-gateway run --config dir/config.toml` (written from
    /// `config`, whose `listen` must be `addr`); logs go to files in `dir`.
    pub fn spawn(dir: &Path, addr: SocketAddr, config: &str) -> GatewayProcess {
        std::fs::write(dir.join("config.toml"), config).expect("write config.toml");
        let append = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .expect("log file")
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_oidc-gateway"));
        cmd.current_dir(dir)
            .arg("run")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(append("gateway.out"))
            .stderr(append("gateway.err"))
            .env_remove("RUST_LOG");
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("OIDC_GATEWAY") {
                cmd.env_remove(key);
            }
        }
        let child = cmd.spawn().expect("spawn oidc-gateway");
        GatewayProcess {
            child,
            dir: dir.to_path_buf(),
            addr,
        }
    }

    /// What the process logged so far.
    pub fn logs(&self) -> String {
        logs_in(&self.dir)
    }

    /// Waits until the process accepts connections (not necessarily ready).
    pub async fn wait_listening(&mut self) {
        let addr = self.addr;
        let dir = self.dir.clone();
        let child = &mut self.child;
        poll_until(
            "the gateway listens",
            || logs_in(&dir),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("the gateway exited early with {status}\n{}", logs_in(&dir));
                }
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            },
        )
        .await;
    }

    /// Sends `signal` (`-HUP`, `-TERM`) to the process.
    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {signal}");
    }

    /// SIGHUP: reload (certificates and configuration).
    pub fn hangup(&self) {
        self.signal("-HUP");
    }

    /// SIGTERM, then waits for the exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM");
        let mut status = None;
        let dir = self.dir.clone();
        let child = &mut self.child;
        poll_until(
            "the gateway exits after SIGTERM",
            || logs_in(&dir),
            || {
                status = child.try_wait().expect("try_wait");
                status.is_some()
            },
        )
        .await;
        status.expect("exited")
    }
}

fn logs_in(dir: &Path) -> String {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    format!(
        "gateway stdout:\n{}\ngateway stderr:\n{}",
        read("gateway.out"),
        read("gateway.err")
    )
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis-server` of its own on a free loopback port, its data kept in an
/// append-only file synced on every write (a restart keeps the sessions);
/// or a replica of one, or a Sentinel monitoring one.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Serving TLS only (`rediss://`), with a certificate from this private CA.
    tls: Option<super::pki::PrivateCa>,
    role: RedisRole,
}

/// The name a test Sentinel monitors its primary under.
pub const SENTINEL_MASTER: &str = "mymaster";

#[derive(Clone, Copy)]
enum RedisRole {
    Primary,
    /// `--replicaof 127.0.0.1 <port>`.
    ReplicaOf(u16),
    /// `redis-server sentinel.conf --sentinel` monitoring [`SENTINEL_MASTER`]
    /// at this port, with a quorum of one and short timeouts.
    SentinelOf(u16),
}

impl RedisServer {
    /// Starts one; None (after saying SKIPPED) only where `redis-server` is
    /// not installed — `.ci/run` installs it, so CI never skips.
    pub async fn start(test: &str) -> Option<RedisServer> {
        RedisServer::launch(test, RedisRole::Primary, |_| None).await
    }

    /// A replica of `primary`, once it has copied the primary's data.
    pub async fn start_replica(test: &str, primary: &RedisServer) -> Option<RedisServer> {
        let replica =
            RedisServer::launch(test, RedisRole::ReplicaOf(primary.port), |_| None).await?;
        replica
            .poll("the replica is in sync with its primary", async |server| {
                server.info_field("replication", "master_link_status").await == Some("up".into())
            })
            .await;
        Some(replica)
    }

    /// A Sentinel monitoring `primary` as [`SENTINEL_MASTER`], once it knows
    /// each of `replicas` as a healthy replica (a failover needs one). With a
    /// TLS primary it speaks only TLS too, with the primary's certificate, and
    /// reaches the primary over TLS.
    pub async fn start_sentinel(
        test: &str,
        primary: &RedisServer,
        replicas: &[&RedisServer],
    ) -> Option<RedisServer> {
        let sentinel = RedisServer::launch(test, RedisRole::SentinelOf(primary.port), |_| {
            primary.tls.clone()
        })
        .await?;
        sentinel.wait_until_replicas_known(replicas).await;
        Some(sentinel)
    }

    /// A Sentinel: waits until it knows each of `replicas` as a healthy
    /// replica (one it may promote).
    pub async fn wait_until_replicas_known(&self, replicas: &[&RedisServer]) {
        let ports: Vec<String> = replicas.iter().map(|r| r.port.to_string()).collect();
        self.poll("the Sentinel knows the replicas", async |sentinel| {
            let known: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
                .arg("REPLICAS")
                .arg(SENTINEL_MASTER)
                .query_async(&mut sentinel.connection().await)
                .await
                .unwrap_or_default();
            ports.iter().all(|port| {
                known.iter().any(|r| {
                    r.get("port") == Some(port)
                        && r.get("flags").map(String::as_str) == Some("slave")
                        && r.get("master-link-status").map(String::as_str) == Some("ok")
                })
            })
        })
        .await;
    }

    /// A Sentinel: the port of the primary it names now, once no failover is
    /// in progress (`SENTINEL MASTER`, what clients read: during a failover it
    /// still names the old primary).
    pub async fn primary_port(&self) -> Option<u16> {
        let master: std::collections::HashMap<String, String> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(SENTINEL_MASTER)
            .query_async(&mut self.connection().await)
            .await
            .ok()?;
        if master.get("flags")?.contains("failover_in_progress") {
            return None;
        }
        master.get("port")?.parse().ok()
    }

    /// A Sentinel: `SENTINEL FAILOVER` (promote a replica now).
    pub async fn failover(&self) {
        let () = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(SENTINEL_MASTER)
            .query_async(&mut self.connection().await)
            .await
            .expect("SENTINEL FAILOVER");
    }

    /// `REPLICAOF primary`, then drops its clients: what Sentinel does to a
    /// demoted primary.
    pub async fn demote_to_replica_of(&self, primary: &RedisServer) {
        let mut connection = self.connection().await;
        let () = redis::cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(primary.port)
            .query_async(&mut connection)
            .await
            .expect("REPLICAOF");
        let _killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .query_async(&mut connection)
            .await
            .expect("CLIENT KILL");
    }

    /// `field` of `INFO section`, e.g. ("replication", "role").
    pub async fn info_field(&self, section: &str, field: &str) -> Option<String> {
        info_field(&mut self.connection().await, section, field).await
    }

    /// How many times `command` ran on this server (`INFO commandstats`).
    pub async fn command_calls(&self, command: &str) -> u64 {
        self.info_field("commandstats", &format!("cmdstat_{command}"))
            .await
            .and_then(|stats| {
                stats
                    .split(',')
                    .find_map(|s| s.strip_prefix("calls="))?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// Polls `holds` on this server until it is true; panics with `what` and
    /// the server's log after `deadline`.
    pub async fn poll_within(
        &self,
        what: &str,
        deadline: Duration,
        holds: impl AsyncFn(&RedisServer) -> bool,
    ) {
        let end = Instant::now() + deadline;
        while !holds(self).await {
            assert!(
                Instant::now() < end,
                "{what} within {deadline:?}\n{}",
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn poll(&self, what: &str, holds: impl AsyncFn(&RedisServer) -> bool) {
        self.poll_within(what, DEADLINE, holds).await;
    }

    /// Starts one in a directory of its own; `tls` gives the certificate it
    /// serves TLS with (issued into that directory, or another server's), if any.
    async fn launch(
        test: &str,
        role: RedisRole,
        tls: impl FnOnce(&Path) -> Option<super::pki::PrivateCa>,
    ) -> Option<RedisServer> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            super::missing::program_missing(
                test,
                "redis-server",
                "apt-get install -y redis-server",
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            tls: tls(dir.path()),
            dir,
            role,
        };
        server.resume().await;
        Some(server)
    }

    /// One that speaks only TLS, with a certificate for 127.0.0.1 issued by a
    /// private CA (`ca_file`); clients are not asked for a certificate.
    pub async fn start_tls(test: &str) -> Option<RedisServer> {
        RedisServer::launch(test, RedisRole::Primary, |dir| {
            Some(super::pki::issue(
                dir,
                "redis",
                "test Redis CA",
                &["127.0.0.1"],
            ))
        })
        .await
    }

    /// `redis://127.0.0.1:PORT/`, or `rediss://` when it serves TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// The private CA of a TLS server.
    pub fn ca_file(&self) -> &Path {
        &self.tls.as_ref().expect("a TLS redis-server").ca_file
    }

    /// Starts (again) on the same port.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("redis.log"))
            .expect("redis log");
        let mut command = Command::new("redis-server");
        if let RedisRole::SentinelOf(primary) = self.role {
            command.arg(self.sentinel_conf(primary)).arg("--sentinel");
        } else {
            self.server_args(&mut command);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let log_path = self.dir.path().join("redis.log");
        poll_until(
            "redis-server listens",
            || std::fs::read_to_string(&log_path).unwrap_or_default(),
            || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
        )
        .await;
    }

    /// A Sentinel's configuration file (written once: Sentinel rewrites it
    /// with what it learnt, kept across a restart).
    fn sentinel_conf(&self, primary: u16) -> PathBuf {
        let conf = self.dir.path().join("sentinel.conf");
        if !conf.exists() {
            let listen = match &self.tls {
                None => format!("port {}\n", self.port),
                Some(pki) => format!(
                    "port 0\ntls-port {}\ntls-cert-file {}\ntls-key-file {}\n\
                     tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                    self.port,
                    pki.cert_file.display(),
                    pki.key_file.display(),
                    pki.ca_file.display()
                ),
            };
            let text = format!(
                "bind 127.0.0.1\n{listen}dir {}\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 3000\n",
                self.dir.path().display()
            );
            std::fs::write(&conf, text).expect("write sentinel.conf");
        }
        conf
    }

    fn server_args(&self, command: &mut Command) {
        command.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            None => command.arg("--port").arg(self.port.to_string()),
            Some(pki) => command
                .args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(&pki.cert_file)
                .arg("--tls-key-file")
                .arg(&pki.key_file)
                .arg("--tls-ca-cert-file")
                .arg(&pki.ca_file)
                .args(["--tls-auth-clients", "no"]),
        };
        if let RedisRole::ReplicaOf(primary) = self.role {
            command
                .args(["--replicaof", "127.0.0.1"])
                .arg(primary.to_string());
        }
        command
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path());
    }

    /// Stops it at once (SIGKILL: like a crash); what it acknowledged is on disk.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A connection for inspecting what the gateway wrote.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = match &self.tls {
            None => redis::Client::open(self.url()),
            Some(pki) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(&pki.ca_file).expect("CA file")),
                },
            ),
        };
        client
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis-server")
    }
}

/// `field` of `INFO section` asked on `connection` (a connection kept across
/// two questions counts as one client in `total_commands_processed`).
pub async fn info_field(
    connection: &mut redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> Option<String> {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(connection)
        .await
        .ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::to_string)
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
