//! A private certificate authority for tests: a CA and a server certificate it
//! signed, written as PEM files (for a TLS server the gateway must trust only
//! through an explicit CA file: a private ACME directory, a Redis over TLS).

use std::path::{Path, PathBuf};

#[derive(Clone)]
pub struct PrivateCa {
    /// The CA's certificate (what the gateway is told to trust).
    pub ca_file: PathBuf,
    /// The server's certificate and key, issued by that CA.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A CA named `name` and a certificate for `hosts` (DNS names or IP addresses)
/// it signed, written into `dir` as `<stem>-ca.pem`, `<stem>.crt`, `<stem>.key`.
pub fn issue(dir: &Path, stem: &str, name: &str, hosts: &[&str]) -> PrivateCa {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("server key");
    let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let leaf = rcgen::CertificateParams::new(hosts)
        .expect("server params")
        .signed_by(&key, &issuer)
        .expect("server certificate");
    let files = PrivateCa {
        ca_file: dir.join(format!("{stem}-ca.pem")),
        cert_file: dir.join(format!("{stem}.crt")),
        key_file: dir.join(format!("{stem}.key")),
    };
    std::fs::write(&files.ca_file, ca_cert.pem()).expect("write CA");
    std::fs::write(&files.cert_file, leaf.pem()).expect("write certificate");
    std::fs::write(&files.key_file, key.serialize_pem()).expect("write key");
    files
}
