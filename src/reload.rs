//! Reload requests: one place where SIGHUP (or a caller such as a test) asks the
//! running gateway to re-read what it can re-read without a restart. Each part
//! that reloads (the TLS certificate today, the configuration next) subscribes
//! and sees every request; none of them needs to know where it came from.

use std::sync::Arc;

use tokio::sync::watch;

/// A broadcast of "reload now". Cheap to clone; every subscriber sees each request
/// (requests arriving faster than a subscriber handles them coalesce into one).
#[derive(Clone, Debug)]
pub struct ReloadSignal {
    requests: Arc<watch::Sender<u64>>,
}

impl Default for ReloadSignal {
    fn default() -> Self {
        ReloadSignal {
            requests: Arc::new(watch::channel(0).0),
        }
    }
}

impl ReloadSignal {
    /// Asks every subscriber to reload.
    pub fn request(&self) {
        self.requests.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver whose `changed()` completes at the next request.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.requests.subscribe()
    }
}

/// SIGHUP, registered early: from the moment this exists a SIGHUP no longer
/// terminates the process (its default action) but waits to be forwarded.
pub struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Installs the SIGHUP handler now (synchronously, before the port opens).
    pub fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signal = match signal(SignalKind::hangup()) {
                Ok(signal) => Some(signal),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the SIGHUP handler; reload by restarting");
                    None
                }
            };
            Hangups { signal }
        }
        #[cfg(not(unix))]
        Hangups {}
    }

    /// Turns every SIGHUP into a [`ReloadSignal::request`], in a task of its own.
    pub fn forward_to(self, reload: ReloadSignal) {
        #[cfg(unix)]
        if let Some(mut signal) = self.signal {
            tokio::spawn(async move {
                while signal.recv().await.is_some() {
                    tracing::info!("SIGHUP received: reloading");
                    reload.request();
                }
            });
        }
        #[cfg(not(unix))]
        let _ = reload;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_subscriber_sees_a_request() {
        let reload = ReloadSignal::default();
        let mut first = reload.subscribe();
        let mut second = reload.subscribe();
        reload.request();
        first.changed().await.unwrap();
        second.changed().await.unwrap();
        assert!(!first.has_changed().unwrap());
    }
}
