//! Sending a request and reading the part of the answer a test checks: its
//! status, its JSON, or — for a refusal — the status and the reason it names.
//! Also requests written byte for byte, past what HTTP clients normalise.

use reqwest::{RequestBuilder, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::TestGateway;

/// Sends `request`; panics (naming the URL) when no answer comes.
pub async fn send(request: RequestBuilder) -> reqwest::Response {
    let (client, request) = request.build_split();
    let request = request.expect("a valid request");
    let url = request.url().clone();
    client
        .execute(request)
        .await
        .unwrap_or_else(|e| panic!("{url}: no answer: {e}"))
}

/// The status of the answer to `request`.
pub async fn status_of(request: RequestBuilder) -> StatusCode {
    send(request).await.status()
}

/// The answer to `request` as JSON (whatever its status).
pub async fn json_of(request: RequestBuilder) -> Value {
    let response = send(request).await;
    let url = response.url().clone();
    response
        .json()
        .await
        .unwrap_or_else(|e| panic!("{url}: not JSON: {e}"))
}

/// Asserts that `response` has `status` and that its body names `reason` (the
/// error code or phrase that says why); returns the body.
pub async fn assert_answer(response: reqwest::Response, status: u16, reason: &str) -> String {
    let actual = response.status();
    let url = response.url().clone();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(
        actual, status,
        "{url}: expected {status} ({reason}): {body}"
    );
    assert!(
        body.contains(reason),
        "{url}: {status} for another reason than {reason:?}: {body}"
    );
    body
}

/// Sends `request` and asserts its answer's `status` and `reason` ([`assert_answer`]).
pub async fn assert_answers(request: RequestBuilder, status: u16, reason: &str) -> String {
    assert_answer(send(request).await, status, reason).await
}

/// Writes `request` (head and body, exactly as given) over a new HTTP/1.1 TLS
/// connection and reads until the gateway closes it: the status code (0 when
/// there is none) and the whole answer.
pub async fn raw_exchange(gw: &TestGateway, request: &str) -> (u16, String) {
    let mut tls = gw.tls_connect(&[b"http/1.1"]).await;
    tls.write_all(request.as_bytes())
        .await
        .expect("write the request");
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Sends `request_head` (without the final blank line) exactly as written,
/// with `Connection: close`; returns the status code and the whole answer.
pub async fn raw_request(gw: &TestGateway, request_head: &str) -> (u16, String) {
    raw_exchange(gw, &format!("{request_head}\r\nConnection: close\r\n\r\n")).await
}

/// Sends `GET <path>` exactly as written (HTTP clients resolve `..` before
/// sending; attackers do not); returns the status code and the whole answer.
pub async fn raw_get(gw: &TestGateway, path: &str) -> (u16, String) {
    raw_request(gw, &format!("GET {path} HTTP/1.1\r\nHost: localhost")).await
}
