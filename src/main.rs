//! The `oidc-gateway` command: run (default), check, healthcheck, demo.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use oidc_gateway::config::{self, ConfigSource, Settings};
use oidc_gateway::{demo, healthcheck, server, telemetry, tls};

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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
                Ok(settings) => check(&settings),
                Err(code) => code,
            },
            Command::Healthcheck { ready, timeout } => match load(cli.config) {
                Ok(settings) => health(&settings, ready, timeout).await,
                Err(code) => code,
            },
            Command::Demo { listen } => run_demo(&listen).await,
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
    let server = match server::start(settings).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("oidc-gateway: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
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

fn check(settings: &Settings) -> ExitCode {
    println!("configuration is valid\n");
    for (key, value) in config::summary(settings) {
        println!("  {key:<24} {value}");
    }
    println!();
    match tls::ensure_certificate(settings, true) {
        Ok(tls::CertificateSource::WouldGenerate) => println!(
            "TLS: {} and {} are missing; a self-signed pair would be created for {:?}",
            settings.config.tls.cert.display(),
            settings.config.tls.key.display(),
            tls::self_signed_names(settings)
        ),
        Ok(_) => {
            tls::install_crypto_provider();
            if let Err(e) = tls::server_config(&settings.config.tls.cert, &settings.config.tls.key)
            {
                eprintln!("oidc-gateway: configuration error: {e}");
                return ExitCode::from(2);
            }
            println!("TLS: certificate and key load and match");
        }
        Err(e) => {
            eprintln!("oidc-gateway: configuration error: {e}");
            return ExitCode::from(2);
        }
    }
    let origin = settings
        .public_url
        .as_ref()
        .map(|u| u.to_string().trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("https://<host>:{}", settings.listen.port()));
    println!(
        "Redirect URI to register in Azure: {origin}{}",
        settings.config.oidc.callback_path
    );
    ExitCode::SUCCESS
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

async fn run_demo(listen: &str) -> ExitCode {
    let upstream = match demo::start_demo_upstream().await {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("oidc-gateway demo: cannot start the demo console: {e}");
            return ExitCode::from(1);
        }
    };
    let settings = match demo::demo_settings(upstream, listen) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("oidc-gateway demo: {e}");
            return ExitCode::from(2);
        }
    };
    if !settings.listen.ip().is_loopback() {
        eprintln!("oidc-gateway demo: --listen must be a loopback address (127.0.0.1 or [::1]); the demo is not for networks");
        return ExitCode::from(2);
    }
    telemetry::init(&settings.config.log);
    println!(
        "\n  oidc-gateway demo: open https://localhost:{}/ (self-signed certificate: accept the browser warning)\n",
        settings.listen.port()
    );
    serve_until_signal(Arc::new(settings)).await
}
