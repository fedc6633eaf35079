//! Logging setup and the access log.
//!
//! The access log line is written when the response body has been sent (or the
//! client went away), so it carries the real byte count and total duration.
//! Health probes log at debug, everything else at info, on target `access`.

use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};
use crate::{Body, BoxError};

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.level`.
/// Returns quietly if a subscriber is already installed (tests, demo).
pub fn init(log: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        // Colours for a terminal only: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let _ = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.fmt_fields(text_fields()).try_init(),
    };
}

/// Field formatting of text logs: every value with its control characters
/// escaped (`\n`, `\r`, `\u{1b}`), so that a value a client chose (an IdP
/// `error_description`, a path) can never end the line and forge another.
/// (JSON logs escape them by construction.)
pub fn text_fields(
) -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        let raw = format!("{value:?}");
        let text = escape_control(&raw);
        if field.name() == "message" {
            writer.write_str(&text)
        } else {
            write!(writer, "{}={text}", field.name())
        }
    })
    .delimited(" ")
}

/// `text` with control characters as escapes; unchanged (no copy) when it has none.
fn escape_control(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// What the access log records about one request.
pub struct AccessRecord {
    pub request_id: http::HeaderValue,
    pub client: IpAddr,
    pub method: Method,
    /// The path without its query: queries carry codes and tokens.
    pub path: String,
    pub status: StatusCode,
    pub started: Instant,
    pub upstream: Option<Duration>,
    /// Health probes are logged at debug only.
    pub quiet: bool,
}

impl AccessRecord {
    fn emit(&self, bytes: u64, completed: bool) {
        let duration_ms = millis(self.started.elapsed());
        let upstream_ms = self.upstream.map(millis);
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: "access",
                    request_id = %self.request_id.to_str().unwrap_or_default(),
                    client = %self.client,
                    method = %self.method,
                    path = %self.path,
                    status = self.status.as_u16(),
                    bytes,
                    duration_ms,
                    upstream_ms,
                    completed,
                    "request"
                )
            };
        }
        if self.quiet {
            line!(debug)
        } else {
            line!(info)
        }
    }
}

/// Milliseconds with microsecond precision (3 decimals), for readable logs.
fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64 / 1000.0 * 1000.0).round() / 1000.0
}

pin_project_lite::pin_project! {
    /// A response body that counts what it sends and writes the access log line
    /// when it ends or is dropped (client gone: `completed = false`).
    pub struct AccessLogBody {
        #[pin]
        inner: Body,
        record: Option<AccessRecord>,
        bytes: u64,
    }

    impl PinnedDrop for AccessLogBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(record) = this.record.take() {
                // An empty body is never polled: it still counts as complete.
                let completed = this.inner.is_end_stream();
                record.emit(*this.bytes, completed);
            }
        }
    }
}

impl AccessLogBody {
    /// `record`: None when the access line is not logged at the current level.
    pub fn new(inner: Body, record: Option<AccessRecord>) -> Self {
        AccessLogBody {
            inner,
            record,
            bytes: 0,
        }
    }
}

impl HttpBody for AccessLogBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(record) = this.record.take() {
                    record.emit(*this.bytes, true);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn text_logs_cannot_be_forged_through_a_field_value() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .fmt_fields(text_fields())
            .finish();
        // What a callback's error_description can hold.
        let description =
            "denied\n2026-01-01T00:00:00Z  INFO access: request status=200 user=admin\r\u{1b}[2J";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(idp_error = "access_denied", description = %description, "the identity provider refused the sign-in");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(r"denied\n2026-01-01"), "{text}");
        assert!(text.contains(r"\r\u{1b}[2J"), "{text}");
        assert!(
            text.contains(r#"the identity provider refused the sign-in idp_error="access_denied""#),
            "{text}"
        );
    }
}
