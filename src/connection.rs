//! Facts about the connection a request arrived on and who is on its other
//! end: the TCP peer, whether it is a trusted proxy, the client address, and
//! the names of the forwarding headers that decide it. Read by the pipeline,
//! the sign-in code (callback origin, rate limits) and the proxy alike, so it
//! lives below all of them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::session::cookies::SessionKeyMemo;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Facts about the connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    /// The peer's IP as a header value, formatted once per connection (every
    /// request sends it upstream in X-Forwarded-For and X-Real-IP).
    pub peer_ip: HeaderValue,
    /// "https" for the TLS listener.
    pub scheme: &'static str,
    pub session_keys: Arc<SessionKeyMemo>,
}

impl ConnectionInfo {
    pub fn new(peer: SocketAddr, scheme: &'static str) -> Self {
        ConnectionInfo {
            peer,
            peer_ip: ip_header_value(peer.ip()),
            scheme,
            session_keys: Arc::default(),
        }
    }
}

/// Who is on the other end: the TCP peer, whether it is a trusted proxy, and the
/// client address derived from X-Forwarded-For when it is.
#[derive(Debug, Clone)]
pub struct ClientAddress {
    pub peer: SocketAddr,
    pub peer_trusted: bool,
    pub client_ip: IpAddr,
    /// `peer` and `client_ip` as header values.
    pub peer_ip_value: HeaderValue,
    pub client_ip_value: HeaderValue,
}

impl ClientAddress {
    pub fn resolve(conn: &ConnectionInfo, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> Self {
        let peer = conn.peer;
        let is_trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
        let peer_trusted = is_trusted(&peer.ip());
        let mut client_ip = peer.ip();
        if peer_trusted {
            // Walk X-Forwarded-For from the right: the first hop we do not trust is the client.
            let hops: Vec<IpAddr> = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|h| h.trim().parse().ok())
                .collect();
            for hop in hops.iter().rev() {
                client_ip = *hop;
                if !is_trusted(hop) {
                    break;
                }
            }
        }
        let client_ip_value = if client_ip == peer.ip() {
            conn.peer_ip.clone()
        } else {
            ip_header_value(client_ip)
        };
        ClientAddress {
            peer,
            peer_trusted,
            client_ip,
            peer_ip_value: conn.peer_ip.clone(),
            client_ip_value,
        }
    }
}

/// An IP address as a header value.
pub fn ip_header_value(ip: IpAddr) -> HeaderValue {
    // An IP address always formats to a valid header value.
    HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_address_only_believes_trusted_proxies() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.7, 10.0.0.2".parse().unwrap());
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let conn = |peer: &str| ConnectionInfo::new(peer.parse().unwrap(), "https");
        let via_proxy = ClientAddress::resolve(&conn("10.0.0.1:5000"), &h, &trusted);
        assert!(via_proxy.peer_trusted);
        assert_eq!(
            via_proxy.client_ip,
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(via_proxy.client_ip_value, "203.0.113.7");
        assert_eq!(via_proxy.peer_ip_value, "10.0.0.1");
        let direct = ClientAddress::resolve(&conn("198.51.100.1:5000"), &h, &trusted);
        assert!(!direct.peer_trusted);
        assert_eq!(direct.client_ip, "198.51.100.1".parse::<IpAddr>().unwrap());
        assert_eq!(direct.client_ip_value, "198.51.100.1");
    }
}
