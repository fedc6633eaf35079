//! The `oidc-gateway` command: run (default), check, healthcheck, demo, dev-idp.
#![forbid(unsafe_code)]

// mimalloc: per-thread free lists suit a proxy that allocates and frees small
// buffers and headers on every request (measured in bench/run; see README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use oidc_gateway::certificate::{expiry_warning, CertificatePair};
use oidc_gateway::config::{self, ConfigSource, Settings};
use oidc_gateway::{demo, devidp, healthcheck, reload, server, telemetry, tls};

/// `check` warns about a certificate that ends within this time.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

const EXAMPLES: &str = "\
Examples:
  oidc-gateway demo                          # try it: https://localhost:8443, no Azure tenant needed
  oidc-gateway --config /etc/oidc-gateway/config.toml
  oidc-gateway check                         # validate config.toml and print what would run
  oidc-gateway healthcheck                   # exit 0 when the local gateway answers /healthz
  OIDC_GATEWAY__UPSTREAM__URL=http://console:21114 oidc-gateway run

Every key of config.toml can be overridden as OIDC_GATEWAY__<SECTION>__<KEY>;
secrets also take <key>_file (e.g. oidc.client_secret_file).";

#[derive(Parser)]
#[command(name = "oidc-gateway", version, about = "TLS-terminating reverse proxy with Microsoft Entra ID sign-in", after_help = EXAMPLES)]
struct Cli {
    /// Configuration file [default: ./config.toml]
    #[arg(long, short = 'c', global = true, env = config::ENV_CONFIG_PATH, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default)
    Run,
    /// Validate the configuration and print what the gateway would do
    Check,
    /// Ask the local gateway whether it is alive (exit 0) or not (exit 1)
    Healthcheck {
        /// Ask /readyz instead of /healthz
        #[arg(long)]
        ready: bool,
        /// Give up after this long
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Run a local demonstration: the gateway in front of a demo console page
    Demo {
        /// Address of the demo gateway (loopback only)
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: String,
        /// Put the demo gateway in front of this console instead of the built-in demo page
        #[arg(long, value_name = "URL")]
        upstream: Option<String>,
    },
    /// Run only the demo's development identity provider (NOT Microsoft) and print
    /// the [oidc] settings that point `run` at it (loopback only; the benchmark uses it)
    DevIdp {
        /// Address of the identity provider (loopback only)
        #[arg(long, default_value = "127.0.0.1:8600")]
        listen: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The main thread is the first worker: a single-threaded runtime like the
    // others that server::start adds (server.workers, one per CPU by default).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oidc-gateway: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => match load(cli.config) {
                Ok(settings) => run(settings).await,
                Err(code) => code,
            },
            Command::Check => match load(cli.config) {
                Ok(settings) => check(&settings).await,
                Err(code) => code,
            },
            Command::Healthcheck { ready, timeout } => match load(cli.config) {
                Ok(settings) => health(&settings, ready, timeout).await,
                Err(code) => code,
            },
            Command::Demo { listen, upstream } => run_demo(&listen, upstream.as_deref()).await,
            Command::DevIdp { listen } => run_dev_idp(&listen).await,
        }
    })
}

fn load(flag: Option<PathBuf>) -> Result<Settings, ExitCode> {
    config::load(&ConfigSource::from_process(flag)).map_err(|e| {
        eprintln!("oidc-gateway: {e}");
        ExitCode::from(2)
    })
}

async fn run(settings: Settings) -> ExitCode {
    telemetry::init(&settings.config.log);
    if settings.config.session.secret.is_empty() {
        tracing::warn!("session.secret is not set: a random one is used, so sessions end when the gateway restarts");
    }
    serve_until_signal(Arc::new(settings)).await
}

async fn serve_until_signal(settings: Arc<Settings>) -> ExitCode {
    // Listen for signals before the port opens: a SIGTERM right after start-up
    // must drain, not kill the process with the default action.
    let signal = shutdown_signal();
    let hangups = reload::Hangups::register();
    let server = match server::start(settings).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("oidc-gateway: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    hangups.forward_to(server.reload.clone());
    signal.await;
    tracing::info!("signal received: draining");
    server.shutdown().await;
    ExitCode::SUCCESS
}

/// Registers the SIGTERM/SIGINT handlers now (synchronously); the returned
/// future completes when either arrives.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (term, interrupt) {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = interrupt.recv() => {},
                }
            }
            _ => {
                tracing::warn!("cannot install signal handlers; stop with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn check(settings: &Settings) -> ExitCode {
    println!("configuration is valid\n");
    for (key, value) in config::summary(settings) {
        println!("  {key:<24} {value}");
    }
    println!();
    print_routes(settings);
    match tls::ensure_certificate(settings, true) {
        Ok(tls::CertificateSource::WouldGenerate) => println!(
            "TLS: {} and {} are missing; a self-signed pair would be created for {:?}",
            settings.config.tls.cert.display(),
            settings.config.tls.key.display(),
            tls::self_signed_names(settings)
        ),
        Ok(_) => {
            tls::install_crypto_provider();
            let pair = match CertificatePair::from_files(
                &settings.config.tls.cert,
                &settings.config.tls.key,
            ) {
                Ok(pair) => pair,
                Err(e) => {
                    eprintln!("oidc-gateway: configuration error: {e}");
                    return ExitCode::from(2);
                }
            };
            println!("TLS: certificate and key load and match");
            if let Some(warning) = expiry_warning(&pair, SystemTime::now(), EXPIRY_WARNING) {
                eprintln!("warning: {}: {warning}", settings.config.tls.cert.display());
            }
        }
        Err(e) => {
            eprintln!("oidc-gateway: configuration error: {e}");
            return ExitCode::from(2);
        }
    }
    if let Err(code) = check_client_certificate(settings) {
        return code;
    }
    let callback = &settings.config.oidc.callback_path;
    println!("\nRedirect URI(s) to register in Azure (Authentication → Web → Redirect URIs):");
    match &settings.public_url {
        Some(url) => println!("  {}{callback}", url.to_string().trim_end_matches('/')),
        None => {
            let port = settings.listen.port();
            let port = if port == 443 {
                String::new()
            } else {
                format!(":{port}")
            };
            println!("  https://<the host name users type>{port}{callback}   (set server.public_url to fix it)");
            println!("  https://localhost{port}{callback}   (when opened on this machine)");
        }
    }
    check_identity_provider(settings).await
}

/// The certificate credential: what to compare with Azure, and its expiry.
fn check_client_certificate(settings: &Settings) -> Result<(), ExitCode> {
    use oidc_gateway::oidc::client_certificate::ClientCertificate;
    let oidc = &settings.config.oidc;
    let (Some(certificate), Some(key)) = (&oidc.client_certificate, &oidc.client_key) else {
        return Ok(());
    };
    let loaded =
        ClientCertificate::load(certificate, key, oidc.client_assertion_alg).map_err(|e| {
            eprintln!("oidc-gateway: configuration error: {e}");
            ExitCode::from(2)
        })?;
    let facts = loaded.facts();
    println!("\nClient certificate (Azure: App registrations → your app → Certificates & secrets → Certificates):");
    println!("  subject                 {}", facts.subject);
    println!(
        "  thumbprint (SHA-1)      {}   (the Thumbprint column in Azure)",
        facts.thumbprint_sha1
    );
    println!("  thumbprint (SHA-256)    {}", facts.thumbprint_sha256);
    println!("  expires                 {}", facts.expires());
    if let Some(warning) = facts.expiry_warning(oidc_gateway::session::unix_now() as i64) {
        println!("  WARNING: {warning}");
    }
    Ok(())
}

/// Reads the IdP's discovery document and keys the way the gateway will.
/// The upstreams, the route table (first match wins) with each route's
/// upstream, and what the RustDesk preset cannot do as configured.
fn print_routes(settings: &Settings) {
    println!("Upstreams:");
    for upstream in &settings.upstreams {
        let c = &upstream.config;
        println!(
            "  {:<16} {}   max_connections {} per worker, tunnel_idle_timeout {}",
            upstream.name,
            upstream.url,
            c.max_connections,
            match c.tunnel_idle_timeout.as_secs() {
                0 => "never".to_string(),
                _ => humantime::format_duration(c.tunnel_idle_timeout).to_string(),
            }
        );
    }
    println!(
        "\nWho gets in ([access]): {}",
        settings
            .config
            .access
            .describe(&settings.config.oidc.allowed_tenants)
    );
    println!("\nRoutes (first match wins):");
    println!(
        "  {:<10} {:<28} {:<22} upstream",
        "methods", "path", "action"
    );
    for line in oidc_gateway::access::AccessPolicy::new(settings).route_table() {
        println!(
            "  {:<10} {:<28} {:<22} {}",
            line.methods, line.path, line.action, line.upstream
        );
    }
    for warning in config::rustdesk_warnings(settings)
        .into_iter()
        .chain(config::identity_warnings(settings))
    {
        println!("\nWARNING: {warning}");
    }
    println!();
}

async fn check_identity_provider(settings: &Settings) -> ExitCode {
    use oidc_gateway::oidc::{idp_http_client, provider::Provider};
    let http = match idp_http_client(settings) {
        Ok(http) => http,
        Err(e) => {
            eprintln!("oidc-gateway: {e}");
            return ExitCode::from(1);
        }
    };
    let provider = Provider::new(settings, http, oidc_gateway::health::Readiness::default());
    println!("\nIdentity provider: {}", provider.discovery_url());
    match provider.load().await {
        Ok(loaded) => {
            let m = &loaded.metadata;
            if m.issuer_is_template() {
                println!(
                    "  issuer enforced         {} with the token's tid, tid one of {:?}",
                    m.issuer, settings.config.oidc.allowed_tenants
                );
            } else {
                println!("  issuer enforced         {}", m.issuer);
            }
            println!("  authorization endpoint  {}", m.authorization_endpoint);
            println!(
                "  token endpoint          {} ({})",
                m.token_endpoint,
                if m.prefers_client_secret_post() {
                    "client_secret_post"
                } else {
                    "client_secret_basic"
                }
            );
            println!(
                "  signing keys            {} key(s) at {}",
                loaded.jwks.keys.len(),
                m.jwks_uri
            );
            println!(
                "  sign-out                {}",
                m.end_session_endpoint
                    .as_deref()
                    .unwrap_or("(no end_session_endpoint: local sign-out only)")
            );
            let mut problems = Vec::new();
            if !m.code_challenge_methods_supported.is_empty()
                && !m
                    .code_challenge_methods_supported
                    .iter()
                    .any(|c| c == "S256")
            {
                problems.push(
                    "the IdP does not list PKCE S256 in code_challenge_methods_supported"
                        .to_string(),
                );
            }
            if settings.config.oidc.response_mode == oidc_gateway::config::ResponseMode::FormPost
                && !m.response_modes_supported.is_empty()
                && !m.response_modes_supported.iter().any(|r| r == "form_post")
            {
                problems.push(
                    "oidc.response_mode = \"form_post\" but the IdP does not support it"
                        .to_string(),
                );
            }
            if problems.is_empty() {
                println!("\nEverything checked is in order.");
                ExitCode::SUCCESS
            } else {
                for p in &problems {
                    eprintln!("problem: {p}");
                }
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("problem: {e}");
            eprintln!(
                "(the gateway would start anyway, answer /readyz with 503 and retry with backoff)"
            );
            ExitCode::from(1)
        }
    }
}

async fn health(settings: &Settings, ready: bool, timeout: Duration) -> ExitCode {
    let path = if ready { "/readyz" } else { "/healthz" };
    let addr = healthcheck::probe_address(settings.listen);
    match healthcheck::probe(settings, addr, path, timeout).await {
        Ok(status) if status.is_success() => {
            println!("{path}: {status}");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("{path}: {status}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("healthcheck failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--listen` of demo and dev-idp: an address on loopback, or why not.
fn loopback_listen(command: &str, listen: &str, example: &str) -> Result<SocketAddr, ExitCode> {
    let Ok(addr) = listen.parse::<SocketAddr>() else {
        eprintln!(
            "oidc-gateway {command}: --listen {listen:?} is not an address:port, e.g. {example}"
        );
        return Err(ExitCode::from(2));
    };
    if !addr.ip().is_loopback() {
        eprintln!("oidc-gateway {command}: --listen must be a loopback address (127.0.0.1 or [::1]); the {command} is not for networks");
        return Err(ExitCode::from(2));
    }
    Ok(addr)
}

/// The development IdP on its own, e.g. for `run` in another process (the
/// benchmark measures the gateway's memory without the IdP's).
async fn run_dev_idp(listen: &str) -> ExitCode {
    let addr = match loopback_listen("dev-idp", listen, "127.0.0.1:8600") {
        Ok(addr) => addr,
        Err(code) => return code,
    };
    let options = demo::demo_idp_options();
    let idp = match devidp::DevIdp::start_on(options, addr).await {
        Ok(idp) => idp,
        Err(e) => {
            eprintln!("oidc-gateway dev-idp: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let options = idp.options();
    // Printed for the operator (and read by bench/run); a throwaway secret of a
    // loopback-only development IdP, not a credential.
    println!(
        "# development identity provider (NOT Microsoft) on {}; Ctrl-C stops it\n[oidc]\nissuer = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\nallowed_algs = [\"ES256\"]",
        idp.base_url(),
        idp.issuer(),
        options.client_id,
        options.client_secret
    );
    shutdown_signal().await;
    idp.shutdown().await;
    ExitCode::SUCCESS
}

async fn run_demo(listen: &str, upstream_url: Option<&str>) -> ExitCode {
    let listen_addr = match loopback_listen("demo", listen, "127.0.0.1:8443") {
        Ok(addr) => addr,
        Err(code) => return code,
    };
    let idp = match devidp::DevIdp::start(demo::demo_idp_options()).await {
        Ok(idp) => idp,
        Err(e) => {
            eprintln!("oidc-gateway demo: cannot start the development identity provider: {e}");
            return ExitCode::from(1);
        }
    };
    let upstream = match upstream_url {
        Some(url) => url.to_string(),
        None => match demo::start_demo_upstream().await {
            Ok(addr) => format!("http://{addr}"),
            Err(e) => {
                eprintln!("oidc-gateway demo: cannot start the demo console: {e}");
                return ExitCode::from(1);
            }
        },
    };
    let settings = match demo::demo_settings(&upstream, &idp, listen) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("oidc-gateway demo: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.config.log);
    println!(
        "\n  oidc-gateway demo\n  open      https://localhost:{}/   (self-signed certificate: accept the browser warning)\n  sign in   with any user name at the development identity provider ({}) - it stands in for Microsoft\n  stop      Ctrl-C\n",
        listen_addr.port(),
        idp.issuer()
    );
    serve_until_signal(Arc::new(settings)).await
}
