//! Signing keys of the development IdP: RSA keys loaded from PKCS#8 PEM
//! (RS256) or P-256 keys generated with ring (ES256), the published JWKS, and
//! JWT assembly.

use std::io;
use std::sync::Arc;

use ring::digest::{digest, SHA256};
use ring::rand::SystemRandom;
use ring::rsa::PublicKeyComponents;
use ring::signature::{
    EcdsaKeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde_json::{json, Map, Value};

use super::web::b64url;
use super::{random_token, SigningAlg};

#[derive(Clone)]
enum Material {
    Rsa(Arc<RsaKeyPair>),
    Ec(Arc<EcdsaKeyPair>),
}

/// One signing key and its key id.
#[derive(Clone)]
pub(super) struct SigningKey {
    pub(super) kid: String,
    material: Material,
}

impl SigningKey {
    /// An RSA key from PKCS#8 PEM text.
    pub(super) fn rsa_from_pem(pem: &str) -> io::Result<SigningKey> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("dev IdP RSA key is not PKCS#8 PEM: {e}"),
            )
        })?;
        let pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("dev IdP RSA key rejected: {e}"),
            )
        })?;
        let material = Material::Rsa(Arc::new(pair));
        Ok(SigningKey {
            kid: kid_of(&material),
            material,
        })
    }

    /// A fresh P-256 key.
    pub(super) fn generate_ec() -> io::Result<SigningKey> {
        let rng = SystemRandom::new();
        let fail = |what: &str| io::Error::other(format!("dev IdP cannot {what} a P-256 key"));
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| fail("generate"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| fail("load"))?;
        let material = Material::Ec(Arc::new(pair));
        Ok(SigningKey {
            kid: kid_of(&material),
            material,
        })
    }

    /// The same key material under a different key id.
    pub(super) fn renamed(&self, kid: String) -> SigningKey {
        SigningKey {
            kid,
            material: self.material.clone(),
        }
    }

    /// The JOSE `alg` of this key.
    pub(super) fn alg(&self) -> &'static str {
        match self.material {
            Material::Rsa(_) => "RS256",
            Material::Ec(_) => "ES256",
        }
    }

    /// The public JWK, as Entra publishes it (`kty`, `use`, `kid`, `alg`, key fields).
    pub(super) fn jwk(&self) -> Value {
        match &self.material {
            Material::Rsa(pair) => {
                let public = PublicKeyComponents::<Vec<u8>>::from(pair.public());
                json!({
                    "kty": "RSA", "use": "sig", "kid": self.kid, "alg": "RS256",
                    "n": b64url(&public.n), "e": b64url(&public.e),
                })
            }
            Material::Ec(pair) => {
                let point = pair.public_key().as_ref();
                let (x, y) = ec_coordinates(point);
                json!({
                    "kty": "EC", "use": "sig", "kid": self.kid, "alg": "ES256",
                    "crv": "P-256", "x": b64url(x), "y": b64url(y),
                })
            }
        }
    }

    /// The JWS signature of `message` (RS256: PKCS#1 v1.5; ES256: 64-byte r||s);
    /// `None` if ring fails.
    pub(super) fn sign(&self, message: &[u8]) -> Option<Vec<u8>> {
        let rng = SystemRandom::new();
        match &self.material {
            Material::Rsa(pair) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, message, &mut signature)
                    .ok()?;
                Some(signature)
            }
            Material::Ec(pair) => Some(pair.sign(&rng, message).ok()?.as_ref().to_vec()),
        }
    }
}

impl SigningKey {
    /// Whether `signature` over `message` verifies with this key's public half.
    pub(super) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        use ring::signature::{
            UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256,
        };
        match &self.material {
            Material::Rsa(pair) => {
                UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pair.public().as_ref())
                    .verify(message, signature)
                    .is_ok()
            }
            Material::Ec(pair) => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pair.public_key().as_ref())
                    .verify(message, signature)
                    .is_ok()
            }
        }
    }
}

/// x and y of an uncompressed P-256 point (0x04 || x || y).
fn ec_coordinates(point: &[u8]) -> (&[u8], &[u8]) {
    let coordinates = point.get(1..).unwrap_or_default();
    coordinates.split_at(coordinates.len() / 2)
}

/// A stable key id: base64url of the first 20 bytes of SHA-256 over the public
/// key (27 characters, the length of Entra's `kid`s).
fn kid_of(material: &Material) -> String {
    let public: Vec<u8> = match material {
        Material::Rsa(pair) => pair.public().as_ref().to_vec(),
        Material::Ec(pair) => pair.public_key().as_ref().to_vec(),
    };
    b64url(&digest(&SHA256, &public).as_ref()[..20])
}

/// The IdP's keys: the active signing key and the previous keys still published.
pub(super) struct KeyRing {
    alg: SigningAlg,
    /// Every RSA key from the options, in order (RS256).
    rsa: Vec<SigningKey>,
    /// Index into `rsa` of the key the next rotation activates.
    next_rsa: usize,
    active: SigningKey,
    previous: Vec<SigningKey>,
}

impl KeyRing {
    pub(super) fn new(alg: SigningAlg, rsa_keys_pem: &[String]) -> io::Result<KeyRing> {
        let rsa = rsa_keys_pem
            .iter()
            .map(|pem| SigningKey::rsa_from_pem(pem))
            .collect::<io::Result<Vec<_>>>()?;
        let active = match alg {
            SigningAlg::Rs256 => rsa.first().cloned().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "dev IdP: RS256 needs at least one key in rsa_keys_pem",
                )
            })?,
            SigningAlg::Es256 => SigningKey::generate_ec()?,
        };
        Ok(KeyRing {
            alg,
            rsa,
            next_rsa: 1,
            active,
            previous: Vec::new(),
        })
    }

    /// The key that signs tokens now.
    pub(super) fn active(&self) -> SigningKey {
        self.active.clone()
    }

    /// Activates a new key; the old one stays published. RS256 takes the next
    /// PEM key (wrapping around after the last); ES256 generates one.
    pub(super) fn rotate(&mut self) {
        let next = match self.alg {
            SigningAlg::Rs256 => {
                let Some(key) = self.rsa.get(self.next_rsa % self.rsa.len().max(1)) else {
                    return;
                };
                self.next_rsa += 1;
                key.clone()
            }
            SigningAlg::Es256 => match SigningKey::generate_ec() {
                Ok(key) => key,
                Err(error) => {
                    tracing::error!(%error, "dev IdP key rotation failed");
                    return;
                }
            },
        };
        if next.kid == self.active.kid {
            return;
        }
        self.previous.retain(|key| key.kid != next.kid);
        let old = std::mem::replace(&mut self.active, next);
        self.previous.push(old);
    }

    /// Stops publishing every key but the active one.
    pub(super) fn retire(&mut self) {
        self.previous.clear();
    }

    fn is_published(&self, kid: &str) -> bool {
        self.published(kid).is_some()
    }

    /// The published key with this id.
    pub(super) fn published(&self, kid: &str) -> Option<&SigningKey> {
        std::iter::once(&self.active)
            .chain(&self.previous)
            .find(|key| key.kid == kid)
    }

    /// A key that is not in the JWKS: ES256 a fresh key; RS256 the first PEM key
    /// not published, else the active key's material under a new random kid.
    pub(super) fn unpublished(&self) -> SigningKey {
        let fallback = || self.active.renamed(b64url(random_token::<20>()));
        match self.alg {
            SigningAlg::Es256 => SigningKey::generate_ec().unwrap_or_else(|_| fallback()),
            SigningAlg::Rs256 => self
                .rsa
                .iter()
                .find(|key| !self.is_published(&key.kid))
                .cloned()
                .unwrap_or_else(fallback),
        }
    }

    /// The JWKS document: `{"keys":[…]}`, active key first.
    /// The JWKS; each key names `issuer` as Entra's keys do.
    pub(super) fn jwks(&self, issuer: &str) -> Value {
        let keys: Vec<Value> = std::iter::once(&self.active)
            .chain(self.previous.iter().rev())
            .map(|key| {
                let mut jwk = key.jwk();
                jwk["issuer"] = json!(issuer);
                jwk
            })
            .collect();
        json!({ "keys": keys })
    }
}

/// `base64url(header) "." base64url(claims)`, the JWS signing input.
pub(super) fn signing_input(header: &Map<String, Value>, claims: &Map<String, Value>) -> String {
    format!(
        "{}.{}",
        b64url(Value::Object(header.clone()).to_string()),
        b64url(Value::Object(claims.clone()).to_string())
    )
}
