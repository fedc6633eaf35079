//! Authenticated encryption (AES-256-GCM, ring) with keys
//! derived by HKDF-SHA256: the memory store's state file (key from
//! `session.secret`), each Redis record (key from that session's cookie) and
//! the login-flow cookies (key from `session.secret`, or random per start).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf::{Salt, HKDF_SHA256};

use crate::crypto::random_bytes;

/// A key for sealing and opening; `purpose` binds it to one use.
pub struct Sealer(LessSafeKey);

impl Sealer {
    /// The key derived from `secret` for `purpose` (distinct purposes give
    /// unrelated keys from the same secret).
    pub fn derive(secret: &[u8], purpose: &[u8]) -> Self {
        let prk = Salt::new(HKDF_SHA256, b"oidc-gateway session seal v1").extract(secret);
        // Expanding to AES-256-GCM's key length cannot fail (one block of output).
        let key = match prk.expand(&[purpose], &AES_256_GCM) {
            Ok(okm) => UnboundKey::from(okm),
            Err(_) => unreachable_key(),
        };
        Sealer(LessSafeKey::new(key))
    }

    /// `nonce ‖ ciphertext ‖ tag`; `context` must be given again to open.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let nonce_bytes = random_bytes::<NONCE_LEN>();
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce_bytes);
        let mut body = plaintext.to_vec();
        let nonce = Nonce::assume_unique_for_key(nonce_bytes);
        // Sealing in place only fails for inputs beyond GCM's limit (64 GiB).
        if self
            .0
            .seal_in_place_append_tag(nonce, Aad::from(context), &mut body)
            .is_err()
        {
            return Vec::new();
        }
        out.extend_from_slice(&body);
        out
    }

    /// The plaintext, or None when `sealed` was not sealed by this key for
    /// this `context` (or was changed since).
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(context), &mut body)
            .ok()?;
        let len = plain.len();
        body.truncate(len);
        Some(body)
    }
}

/// HKDF-SHA256 expands up to 255 × 32 bytes; a 32-byte key is always within.
#[cold]
fn unreachable_key() -> UnboundKey {
    tracing::error!("HKDF refused to expand a 32-byte key");
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_the_same_key_and_context() {
        let sealer = Sealer::derive(b"secret", b"purpose");
        let sealed = sealer.seal(b"ctx", b"hello");
        assert_eq!(sealer.open(b"ctx", &sealed).as_deref(), Some(&b"hello"[..]));
        assert!(sealer.open(b"other", &sealed).is_none(), "context is bound");
        assert!(
            Sealer::derive(b"secret", b"other purpose")
                .open(b"ctx", &sealed)
                .is_none(),
            "purpose is bound"
        );
        assert!(Sealer::derive(b"other secret", b"purpose")
            .open(b"ctx", &sealed)
            .is_none());
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(
            sealer.open(b"ctx", &tampered).is_none(),
            "tampering is seen"
        );
        assert!(sealer.open(b"ctx", &sealed[..10]).is_none(), "too short");
        assert_ne!(
            sealer.seal(b"ctx", b"hello"),
            sealed,
            "fresh nonce per seal"
        );
    }
}
