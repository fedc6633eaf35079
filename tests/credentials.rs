//! Client credentials without secrets: a certificate (`private_key_jwt`, RS256
//! with `x5t` or PS256 with `x5t#S256`) and a federated assertion file. The
//! development IdP verifies each assertion the way Entra does (signature with
//! the registered certificate, `aud`, `exp`, `jti` single use).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use common::*;
use serde_json::Value;

const CLIENT_KEY_A: &str = include_str!("fixtures/idp-rsa-2.pem");
const CLIENT_KEY_B: &str = include_str!("fixtures/idp-rsa-3.pem");

/// A self-signed certificate for `key_pem`, as an operator would upload to Azure.
fn certificate(key_pem: &str, name: &str) -> String {
    let key = rcgen::KeyPair::from_pem(key_pem).expect("RSA key loads");
    let params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
    params.self_signed(&key).expect("certificate").pem()
}

fn sha_thumbprint(cert_pem: &str, sha256: bool) -> String {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let algorithm = if sha256 {
        &ring::digest::SHA256
    } else {
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ring::digest::digest(algorithm, der.as_ref()))
}

fn jwt_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("JWT part");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .expect("base64url"),
    )
    .expect("JSON")
}

struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

fn write_pair(cert_pem: &str, key_pem: &str) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("client.crt");
    let key = dir.path().join("client.key");
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    Files {
        _dir: dir,
        cert,
        key,
    }
}

fn toml_path(path: &Path) -> String {
    path.display().to_string()
}

/// A gateway whose only credential is the certificate pair in `files`.
fn certificate_gateway(upstream: SocketAddr, files: &Files) -> GatewayBuilder {
    gateway(upstream)
        .without_client_secret()
        .oidc(&format!(
            "client_certificate = \"{}\"",
            toml_path(&files.cert)
        ))
        .oidc(&format!("client_key = \"{}\"", toml_path(&files.key)))
}

#[tokio::test]
async fn certificate_sign_in_sends_an_rs256_assertion_with_x5t_that_the_idp_verifies() {
    let cert_a = certificate(CLIENT_KEY_A, "oidc-gateway client A");
    let files = write_pair(&cert_a, CLIENT_KEY_A);
    let upstream = echo_upstream().await;
    let registered = cert_a.clone();
    let gw = certificate_gateway(upstream, &files)
        .idp(move |o| o.client_certificates = vec![registered])
        .start()
        .await;
    let assertions = gw.idp.client_assertions();
    assert_eq!(assertions.len(), 1, "one token request, with an assertion");
    let header = jwt_part(&assertions[0], 0);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["x5t"], sha_thumbprint(&cert_a, false));
    assert!(header.get("x5t#S256").is_none());
    let claims = jwt_part(&assertions[0], 1);
    assert_eq!(claims["iss"], CLIENT_ID);
    assert_eq!(claims["sub"], CLIENT_ID);
    assert_eq!(
        claims["aud"],
        format!("{}/{TENANT}/oauth2/v2.0/token", gw.idp.base_url())
    );
    let (nbf, exp) = (
        claims["nbf"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert!(exp > nbf && exp - nbf <= 600, "lifetime ≤ 10 min: {claims}");
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() == 36));

    // A second sign-in gets a new assertion (new jti), accepted again.
    let response = gw.sign_in(&gw.fresh_browser(), "/").await;
    assert_eq!(response.status(), 303);
    let assertions = gw.idp.client_assertions();
    assert_ne!(
        jwt_part(&assertions[0], 1)["jti"],
        jwt_part(&assertions[1], 1)["jti"]
    );

    // The IdP accepts each jti once: replaying the first assertion is refused for that reason.
    let replay = reqwest::Client::new()
        .post(format!("{}/{TENANT}/oauth2/v2.0/token", gw.idp.base_url()))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", "any"),
            ("client_id", CLIENT_ID),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertions[0].as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 401);
    let body: Value = replay.json().await.unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("AADSTS700025") && d.contains("jti replayed")),
        "{body}"
    );
}

#[tokio::test]
async fn ps256_assertions_name_the_certificate_by_x5t_s256() {
    let cert_a = certificate(CLIENT_KEY_A, "oidc-gateway client A");
    let files = write_pair(&cert_a, CLIENT_KEY_A);
    let upstream = echo_upstream().await;
    let registered = cert_a.clone();
    let gw = certificate_gateway(upstream, &files)
        .oidc("client_assertion_alg = \"PS256\"")
        .idp(move |o| o.client_certificates = vec![registered])
        .start()
        .await;
    let header = jwt_part(&gw.idp.client_assertions()[0], 0);
    assert_eq!(header["alg"], "PS256");
    assert_eq!(header["x5t#S256"], sha_thumbprint(&cert_a, true));
    assert!(header.get("x5t").is_none());
}

#[tokio::test]
async fn rotated_certificate_files_are_used_without_a_restart() {
    let cert_a = certificate(CLIENT_KEY_A, "oidc-gateway client A");
    let cert_b = certificate(CLIENT_KEY_B, "oidc-gateway client B");
    let files = write_pair(&cert_a, CLIENT_KEY_A);
    let upstream = echo_upstream().await;
    let registered = vec![cert_a.clone(), cert_b.clone()];
    let gw = certificate_gateway(upstream, &files)
        .idp(move |o| o.client_certificates = registered)
        .start()
        .await;
    // The operator uploads B to Azure, then replaces both files (key first: a
    // request in between sees a mismatched pair and keeps using A).
    std::fs::write(&files.key, CLIENT_KEY_B).unwrap();
    std::fs::write(&files.cert, &cert_b).unwrap();
    let response = gw.sign_in(&gw.fresh_browser(), "/").await;
    assert_eq!(response.status(), 303, "sign-in with the new pair");
    let assertions = gw.idp.client_assertions();
    assert_eq!(
        jwt_part(&assertions[0], 0)["x5t"],
        sha_thumbprint(&cert_a, false)
    );
    assert_eq!(
        jwt_part(&assertions[1], 0)["x5t"],
        sha_thumbprint(&cert_b, false),
        "the second sign-in used the rotated certificate"
    );
}

#[tokio::test]
async fn a_certificate_not_registered_at_the_idp_is_refused_with_entras_reason() {
    let cert_a = certificate(CLIENT_KEY_A, "oidc-gateway client A");
    let cert_b = certificate(CLIENT_KEY_B, "oidc-gateway client B");
    let files = write_pair(&cert_a, CLIENT_KEY_A);
    let upstream = echo_upstream().await;
    let gw = certificate_gateway(upstream, &files)
        .idp(move |o| o.client_certificates = vec![cert_b])
        .anonymous()
        .start()
        .await;
    let response = gw.sign_in(&gw.fresh_browser(), "/").await;
    // Nobody can sign in until the operator fixes the credential: 503, not the user's fault.
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client", "{body}");
    assert_eq!(body["aadsts"], "AADSTS700027", "{body}");
    assert!(
        body["operator_action"]
            .as_str()
            .is_some_and(|m| m.contains("thumbprint")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("AADSTS700027") && m.contains("key was not found")),
        "{body}"
    );
}

#[tokio::test]
async fn federated_assertion_file_is_read_at_each_use() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    let subject = "system:serviceaccount:gateway:oidc-gateway";
    // The file must exist before the first sign-in; its content comes from the IdP
    // acting as the cluster's service-account issuer, once it runs.
    std::fs::write(&token_file, "placeholder.before.start").unwrap();
    let upstream = echo_upstream().await;
    let gw = gateway(upstream)
        .without_client_secret()
        .oidc(&format!(
            "client_assertion_file = \"{}\"",
            toml_path(&token_file)
        ))
        .idp(|o| o.federated_subject = Some(subject.into()))
        .anonymous()
        .start()
        .await;
    let first = gw.idp.mint_workload_token(subject);
    std::fs::write(&token_file, format!("{first}\n")).unwrap();
    assert_eq!(gw.sign_in(&gw.fresh_browser(), "/").await.status(), 303);
    // The platform rewrites the file (tokens live about an hour).
    let second = gw.idp.mint_workload_token(subject);
    assert_ne!(first, second);
    std::fs::write(&token_file, &second).unwrap();
    assert_eq!(gw.sign_in(&gw.fresh_browser(), "/").await.status(), 303);
    assert_eq!(gw.idp.client_assertions(), vec![first, second]);

    // A token for another subject: the IdP finds no matching federated credential.
    std::fs::write(
        &token_file,
        gw.idp
            .mint_workload_token("system:serviceaccount:other:app"),
    )
    .unwrap();
    let refused = gw.sign_in(&gw.fresh_browser(), "/").await;
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("AADSTS700213")),
        "{body}"
    );
}
