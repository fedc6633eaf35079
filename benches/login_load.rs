//! Real logins against an `oidc-gateway demo` (gateway + development IdP), to
//! create many sessions the way browsers do — no back door:
//!
//!   1. `GET  <gateway>/.gateway/sign_in?rd=%2F`  → 302 to the IdP + flow cookie
//!   2. `GET  <IdP authorize URL>`                → 200 login form
//!   3. `POST <form action>` hidden fields + `username=<unique user>` → 302 to the callback
//!   4. `GET  <callback URL>` with the flow cookie → 303 + `__Host-oidc-gateway` session cookie
//!
//! Run: `cargo bench --bench login_load -- <gateway url> <count> <concurrency> [max_seconds]`
//! (`bench/run` does). Each of `concurrency` workers is its own client (its own
//! connections, like separate browsers), HTTP/1.1, redirects not followed, the
//! loopback self-signed certificate accepted. With `max_seconds` the workers stop
//! starting logins after that long and the count actually done is reported.
//! Prints progress to stderr and, last, one JSON line on stdout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Client, StatusCode};

const SESSION_COOKIE: &str = "__Host-oidc-gateway=";

struct Shared {
    gateway: String,
    count: u64,
    next: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    deadline: Option<Instant>,
    first_error: Mutex<Option<String>>,
}

fn usage() -> ! {
    eprintln!("usage: cargo bench --bench login_load -- <gateway url> <count> <concurrency> [max_seconds]");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    // `cargo bench` appends `--bench`; ignore flags.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.len() < 3 {
        usage();
    }
    let gateway = args[0].trim_end_matches('/').to_string();
    let count: u64 = args[1].parse().unwrap_or_else(|_| usage());
    let concurrency: u64 = args[2].parse().unwrap_or_else(|_| usage());
    let max_seconds: Option<f64> = args.get(3).map(|s| s.parse().unwrap_or_else(|_| usage()));
    let started = Instant::now();
    let shared = Arc::new(Shared {
        gateway,
        count,
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        deadline: max_seconds.map(|s| started + Duration::from_secs_f64(s)),
        first_error: Mutex::new(None),
    });
    // A per-run prefix keeps user names unique across runs against one gateway.
    let run_tag = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
            & 0xffffff
    );

    let progress = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let done = shared.done.load(Ordering::Relaxed);
                eprintln!(
                    "login_load: {done} logins after {:.0} s ({:.0}/s over the last 10 s)",
                    started.elapsed().as_secs_f64(),
                    (done - last) as f64 / 10.0
                );
                last = done;
            }
        })
    };

    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let shared = shared.clone();
        let tag = run_tag.clone();
        workers.push(tokio::spawn(async move {
            let client = Client::builder()
                .danger_accept_invalid_certs(true) // the demo's self-signed certificate, loopback only
                .redirect(reqwest::redirect::Policy::none())
                .http1_only()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client");
            loop {
                if shared.deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i = shared.next.fetch_add(1, Ordering::Relaxed);
                if i >= shared.count {
                    break;
                }
                let user = format!("load-{tag}-{i}@contoso.example");
                match login(&client, &shared.gateway, &user).await {
                    Ok(()) => {
                        shared.done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        shared.failed.fetch_add(1, Ordering::Relaxed);
                        let mut first = shared.first_error.lock().unwrap();
                        if first.is_none() {
                            eprintln!("login_load: login {i} failed: {e}");
                            *first = Some(e);
                        }
                    }
                }
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    progress.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let done = shared.done.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    let rate = done as f64 / elapsed;
    eprintln!(
        "login_load: {done} logins ({failed} failed) in {elapsed:.1} s = {rate:.0} logins/s, concurrency {concurrency}"
    );
    println!(
        "{}",
        serde_json::json!({
            "requested": count,
            "logins": done,
            "failed": failed,
            "seconds": (elapsed * 1000.0).round() / 1000.0,
            "logins_per_second": rate.round(),
            "concurrency": concurrency,
            "stopped_by_deadline": done + failed < count,
            "first_error": *shared.first_error.lock().unwrap(),
        })
    );
    if done == 0 {
        std::process::exit(1);
    }
}

/// One login through the real flow; Ok when the callback set a session cookie.
async fn login(client: &Client, gateway: &str, user: &str) -> Result<(), String> {
    // 1. The gateway starts the login.
    let answer = client
        .get(format!("{gateway}/.gateway/sign_in?rd=%2F"))
        .send()
        .await
        .map_err(|e| format!("sign_in: {e}"))?;
    expect(&answer, &[StatusCode::FOUND], "sign_in")?;
    let flow_cookie = cookie_pairs(&answer);
    let authorize = location(&answer, "sign_in")?;
    drop(answer);

    // 2. The IdP's login page.
    let answer = client
        .get(&authorize)
        .send()
        .await
        .map_err(|e| format!("authorize: {e}"))?;
    expect(&answer, &[StatusCode::OK], "authorize page")?;
    let page = answer
        .text()
        .await
        .map_err(|e| format!("authorize page: {e}"))?;
    let (action, mut fields) = parse_form(&page).ok_or("no login form on the IdP page")?;
    fields.retain(|(name, _)| name != "username");
    fields.push(("username".into(), user.into()));
    let base = reqwest::Url::parse(&authorize).map_err(|e| format!("authorize URL: {e}"))?;
    let action = match action {
        Some(a) => base.join(&a).map_err(|e| format!("form action: {e}"))?,
        None => base.clone(),
    };

    // 3. Submit the form: the IdP redirects to the gateway's callback with a code.
    let answer = client
        .post(action)
        .form(&fields)
        .send()
        .await
        .map_err(|e| format!("form post: {e}"))?;
    expect(
        &answer,
        &[StatusCode::FOUND, StatusCode::SEE_OTHER],
        "form post",
    )?;
    let callback = location(&answer, "form post")?;
    drop(answer);

    // 4. The callback with the flow cookie: session cookie + 303.
    let answer = client
        .get(&callback)
        .header(COOKIE, flow_cookie)
        .send()
        .await
        .map_err(|e| format!("callback: {e}"))?;
    expect(&answer, &[StatusCode::SEE_OTHER], "callback")?;
    let has_session = answer
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .any(|c| c.as_bytes().starts_with(SESSION_COOKIE.as_bytes()));
    if has_session {
        Ok(())
    } else {
        Err("callback set no session cookie".into())
    }
}

fn expect(answer: &reqwest::Response, wanted: &[StatusCode], step: &str) -> Result<(), String> {
    if wanted.contains(&answer.status()) {
        Ok(())
    } else {
        Err(format!("{step} answered {}", answer.status()))
    }
}

fn location(answer: &reqwest::Response, step: &str) -> Result<String, String> {
    answer
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| format!("{step}: no Location"))
}

/// `name=value; name=value` from the Set-Cookie headers (what a browser sends back).
fn cookie_pairs(answer: &reqwest::Response) -> String {
    answer
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|c| c.split(';').next().unwrap_or_default().trim())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A login form: its action (if any) and its hidden inputs.
type LoginForm = (Option<String>, Vec<(String, String)>);

/// The first form's action and its hidden inputs (as bench/signin.py reads them).
fn parse_form(page: &str) -> Option<LoginForm> {
    let form_at = page.find("<form")?;
    let form_tag = &page[form_at..form_at + page[form_at..].find('>')?];
    let action = attribute(form_tag, "action");
    let mut fields = Vec::new();
    let mut rest = &page[form_at..];
    while let Some(at) = rest.find("<input") {
        let end = rest[at..].find('>')? + at;
        let tag = &rest[at..end];
        if attribute(tag, "type").as_deref() == Some("hidden") {
            if let Some(name) = attribute(tag, "name") {
                fields.push((name, attribute(tag, "value").unwrap_or_default()));
            }
        }
        rest = &rest[end..];
    }
    Some((action, fields))
}

/// `name="value"` inside one tag, HTML-unescaped.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let len = tag[start..].find('"')?;
    Some(unescape(&tag[start..start + len]))
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}
