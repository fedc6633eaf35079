//! `jsonwebtoken` (≥ 10) verifying with `ring`, the binary's one crypto provider.
//!
//! jsonwebtoken 10 moved its cryptography behind a [`CryptoProvider`] and ships
//! two (aws-lc-rs, RustCrypto); enabling either would put a second crypto
//! library in the binary (RustCrypto's `rsa` also carries RUSTSEC-2023-0071).
//! This module supplies the provider from ring instead. The gateway only
//! verifies with jsonwebtoken (its own signatures — identity assertion, client
//! assertion — are made with ring directly), so signing and the JWK helpers
//! that need private keys answer "not supported" rather than panicking.
//!
//! [`install`] must run before the first verification; [`crate::oidc::token::TokenPolicy`]
//! calls it when built, and it is idempotent.

use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::jwk::ThumbprintHash;
use jsonwebtoken::signature;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature::{self as ring_sig, RsaPublicKeyComponents, UnparsedPublicKey};

/// The ring-backed provider.
pub static RING_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: no_signer,
    verifier_factory: verifier,
    jwk_utils: JwkUtils {
        extract_rsa_public_key_components: |_| Err(unsupported()),
        extract_ec_public_key_coordinates: |_, _| Err(unsupported()),
        compute_digest,
    },
};

/// Makes [`RING_PROVIDER`] jsonwebtoken's provider for this process. A provider
/// installed earlier stays (only this crate installs one).
pub fn install() {
    let _ = RING_PROVIDER.install_default();
}

fn unsupported() -> Error {
    ErrorKind::InvalidAlgorithm.into()
}

fn no_signer(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    Err(unsupported())
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Vec<u8> {
    let algorithm = match hash {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
    };
    ring::digest::digest(algorithm, data).as_ref().to_vec()
}

/// Which ring algorithm checks a JWS algorithm; HMAC is never accepted here
/// (a client secret must not sign identities).
enum RingAlgorithm {
    Rsa(&'static ring_sig::RsaParameters),
    Other(&'static dyn ring_sig::VerificationAlgorithm),
}

/// The ring algorithm for a JWS algorithm, and the key family it needs.
fn ring_algorithm(algorithm: Algorithm) -> Option<(RingAlgorithm, AlgorithmFamily)> {
    use RingAlgorithm::{Other, Rsa};
    Some(match algorithm {
        Algorithm::RS256 => (
            Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA256),
            AlgorithmFamily::Rsa,
        ),
        Algorithm::RS384 => (
            Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA384),
            AlgorithmFamily::Rsa,
        ),
        Algorithm::RS512 => (
            Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA512),
            AlgorithmFamily::Rsa,
        ),
        Algorithm::PS256 => (
            Rsa(&ring_sig::RSA_PSS_2048_8192_SHA256),
            AlgorithmFamily::Rsa,
        ),
        Algorithm::PS384 => (
            Rsa(&ring_sig::RSA_PSS_2048_8192_SHA384),
            AlgorithmFamily::Rsa,
        ),
        Algorithm::PS512 => (
            Rsa(&ring_sig::RSA_PSS_2048_8192_SHA512),
            AlgorithmFamily::Rsa,
        ),
        Algorithm::ES256 => (
            Other(&ring_sig::ECDSA_P256_SHA256_FIXED),
            AlgorithmFamily::Ec,
        ),
        Algorithm::ES384 => (
            Other(&ring_sig::ECDSA_P384_SHA384_FIXED),
            AlgorithmFamily::Ec,
        ),
        Algorithm::EdDSA => (Other(&ring_sig::ED25519), AlgorithmFamily::Ed),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => return None,
    })
}

struct RingVerifier {
    algorithm: Algorithm,
    ring: RingAlgorithm,
    key: DecodingKey,
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    let (ring, family) = ring_algorithm(*algorithm).ok_or_else(unsupported)?;
    if key.family() != family {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(RingVerifier {
        algorithm: *algorithm,
        ring,
        key: key.clone(),
    }))
}

impl signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let checked = match (&self.ring, self.key.kind()) {
            (RingAlgorithm::Rsa(params), DecodingKeyKind::RsaModulusExponent { n, e }) => {
                RsaPublicKeyComponents { n, e }.verify(params, message, signature)
            }
            // PKCS#1 RSAPublicKey DER, or an EC point / Ed25519 key as bytes.
            (RingAlgorithm::Rsa(params), DecodingKeyKind::SecretOrDer(der)) => {
                UnparsedPublicKey::new(*params, der).verify(message, signature)
            }
            (RingAlgorithm::Other(algorithm), DecodingKeyKind::SecretOrDer(bytes)) => {
                UnparsedPublicKey::new(*algorithm, bytes).verify(message, signature)
            }
            (RingAlgorithm::Other(_), DecodingKeyKind::RsaModulusExponent { .. }) => {
                return Err(signature::Error::new())
            }
        };
        checked.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use jsonwebtoken::{decode, Validation};
    use ring::rand::SystemRandom;
    use ring::signature::{
        EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
        RSA_PSS_SHA256,
    };
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivatePkcs8KeyDer;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn input(alg: &str) -> String {
        let exp = crate::session::unix_now() + 600;
        format!(
            "{}.{}",
            b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes()),
            b64(format!(r#"{{"sub":"u","exp":{exp}}}"#).as_bytes())
        )
    }

    fn validation(alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.validate_aud = false;
        v
    }

    fn rsa() -> (RsaKeyPair, DecodingKey) {
        let pem = include_str!("../tests/fixtures/idp-rsa-1.pem");
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        let pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
        let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
        let key = DecodingKey::from_rsa_raw_components(&public.n, &public.e);
        (pair, key)
    }

    #[test]
    fn rs256_and_ps256_verify_and_a_changed_byte_does_not() {
        install();
        let (pair, key) = rsa();
        for (alg, padding) in [
            (
                Algorithm::RS256,
                &RSA_PKCS1_SHA256 as &dyn ring::signature::RsaEncoding,
            ),
            (Algorithm::PS256, &RSA_PSS_SHA256),
        ] {
            let input = input(&format!("{alg:?}"));
            let mut signature = vec![0; pair.public().modulus_len()];
            pair.sign(
                padding,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .unwrap();
            let token = format!("{input}.{}", b64(&signature));
            decode::<serde_json::Value>(&token, &key, &validation(alg)).unwrap();
            signature[10] ^= 1;
            let forged = format!("{input}.{}", b64(&signature));
            let error = decode::<serde_json::Value>(&forged, &key, &validation(alg)).unwrap_err();
            assert_eq!(error.kind(), &ErrorKind::InvalidSignature, "{alg:?}");
        }
    }

    #[test]
    fn es256_verifies_with_jwk_components() {
        install();
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref();
        let key = DecodingKey::from_ec_components(&b64(&point[1..33]), &b64(&point[33..])).unwrap();
        let input = input("ES256");
        let signature = pair.sign(&rng, input.as_bytes()).unwrap();
        let token = format!("{input}.{}", b64(signature.as_ref()));
        decode::<serde_json::Value>(&token, &key, &validation(Algorithm::ES256)).unwrap();
    }

    #[test]
    fn hmac_and_mismatched_key_families_are_refused() {
        install();
        let secret = DecodingKey::from_secret(b"a client secret");
        assert!(verifier(&Algorithm::HS256, &secret).is_err());
        let (_, rsa_key) = rsa();
        let error = verifier(&Algorithm::ES256, &rsa_key).err().unwrap();
        assert_eq!(error.kind(), &ErrorKind::InvalidKeyFormat);
        assert!(no_signer(&Algorithm::RS256, &EncodingKey::from_secret(b"x")).is_err());
    }
}
