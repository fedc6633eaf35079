//! Small cryptographic helpers shared by sessions, sign-in and the signed
//! assertion: random bytes from the OS and unpadded base64url.

use base64::Engine;

/// `N` bytes from the operating system's CSPRNG (aborts if it fails: a
/// security gateway cannot go on without randomness).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        // The OS RNG failing is not survivable for a security gateway.
        tracing::error!("the operating system's random number generator failed");
        std::process::abort();
    }
    bytes
}

pub fn base64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
