//! The RustDesk relay profile of bench/run: many WebSocket tunnels through a TLS
//! proxy, each carrying a steady stream both ways, as a relayed remote-desktop
//! session does (~180 kB/s).
//!
//! ```text
//! relay_load echo <listen addr>
//!     the upstream: answers a WebSocket upgrade with 101, then echoes every byte
//! relay_load load <host:port> <ca.pem> <path> <tunnels> <bytes/s per tunnel> <seconds>
//!     opens <tunnels> TLS connections, upgrades each at <path>, then writes
//!     <bytes/s> in 10 writes a second per tunnel and reads the echo; prints one
//!     JSON line: tunnels opened, failures, bytes echoed, seconds
//! ```
//!
//! After the upgrade both proxies only tunnel bytes, so the payload is raw bytes,
//! not WebSocket frames: what is measured is the proxies' tunnels and TLS, not a
//! WebSocket library. One thread each (the proxies get the rest of the machine).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TICKS_PER_SECOND: u64 = 10;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = match args.first().map(String::as_str) {
        Some("echo") if args.len() == 2 => runtime.block_on(echo(&args[1])),
        Some("load") if args.len() == 7 => runtime.block_on(load(&args[1..])),
        _ => Err("usage: relay_load echo <addr> | relay_load load <host:port> <ca.pem> <path> <tunnels> <bytes/s> <seconds>".into()),
    };
    if let Err(e) = result {
        eprintln!("relay_load: {e}");
        std::process::exit(1);
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Reads an HTTP head (up to the blank line); returns it.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<String, Error> {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err("connection closed before the end of the HTTP head".into());
        }
        head.push(byte[0]);
        if head.len() > 16 * 1024 {
            return Err("HTTP head too large".into());
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

async fn echo(listen: &str) -> Result<(), Error> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (mut stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let Ok(head) = read_head(&mut stream).await else {
                return;
            };
            let key = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("sec-websocket-key")
                        .then(|| value.trim().to_string())
                })
                .unwrap_or_default();
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            let (mut read, mut write) = stream.split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
        });
    }
}

async fn load(args: &[String]) -> Result<(), Error> {
    let addr: SocketAddr = args[0].parse()?;
    let roots = {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(&args[1])? {
            roots.add(cert?)?;
        }
        roots
    };
    let path = args[2].clone();
    let tunnels: usize = args[3].parse()?;
    let rate: u64 = args[4].parse()?;
    let seconds: u64 = args[5].parse()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let echoed = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let chunk = vec![0x5au8; (rate / TICKS_PER_SECOND) as usize];
    let start = Instant::now();
    // Opening all tunnels is not measured: the load runs `seconds` after the last one opened.
    let mut ready = Vec::new();
    for i in 0..tunnels {
        let connector = connector.clone();
        let path = path.clone();
        let (opened, failed) = (opened.clone(), failed.clone());
        ready.push(tokio::spawn(async move {
            let tunnel = async {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let name = rustls_pki_types::ServerName::try_from("localhost")?;
                let mut tls = connector.connect(name, tcp).await?;
                let request = format!(
                    "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: cmVsYXktbG9hZC17aX0tLQ==\r\n\r\n"
                )
                .replace("{i}", &format!("{:03}", i % 1000));
                tls.write_all(request.as_bytes()).await?;
                let head = read_head(&mut tls).await?;
                if !head.starts_with("HTTP/1.1 101") {
                    return Err::<_, Error>(format!("no upgrade: {}", head.lines().next().unwrap_or("")).into());
                }
                Ok(tls)
            };
            match tunnel.await {
                Ok(tls) => {
                    opened.fetch_add(1, Ordering::Relaxed);
                    Some(tls)
                }
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("relay_load: first failure: {e}");
                    }
                    None
                }
            }
        }));
    }
    let mut streams = Vec::new();
    for handle in ready {
        if let Ok(Some(tls)) = handle.await {
            streams.push(tls);
        }
    }
    let open_seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "relay_load: {} tunnels open after {open_seconds:.1} s",
        streams.len()
    );
    println!("OPEN {}", streams.len());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let measured_from = Instant::now();
    let mut running = Vec::new();
    for (i, tls) in streams.into_iter().enumerate() {
        let (mut read, mut write) = tokio::io::split(tls);
        let chunk = chunk.clone();
        let echoed = echoed.clone();
        // Spread the writers over the tick so the load is steady, not a burst every 100 ms.
        let offset = Duration::from_millis(
            (i as u64 * 1000 / TICKS_PER_SECOND / tunnels.max(1) as u64) % 100,
        );
        running.push(tokio::spawn(async move {
            let writer = async {
                tokio::time::sleep(offset).await;
                let mut tick =
                    tokio::time::interval(Duration::from_millis(1000 / TICKS_PER_SECOND));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                while tokio::time::Instant::now() < deadline {
                    tick.tick().await;
                    if write.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            };
            let reader = async {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => {
                            echoed.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        _ => break,
                    }
                }
            };
            tokio::join!(writer, reader);
        }));
    }
    for handle in running {
        let _ = handle.await;
    }
    let measured = measured_from.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "tunnels_requested": tunnels,
            "tunnels_opened": opened.load(Ordering::Relaxed),
            "tunnels_failed": failed.load(Ordering::Relaxed),
            "bytes_per_second_per_tunnel": rate,
            "bytes_echoed": echoed.load(Ordering::Relaxed),
            "seconds": measured,
            "open_seconds": open_seconds,
        })
    );
    Ok(())
}
