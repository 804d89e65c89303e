//! Random identifiers and secrets, and the one-way digests the store keeps of them.
//!
//! Every secret Lanyard hands out (client secrets now; session IDs, codes and tokens later) is
//! drawn from the OS CSPRNG and stored only as its SHA-256, so a copy of the database does not
//! reveal it. SHA-256 without salt is enough here because the inputs carry 256 bits of entropy;
//! passwords, which do not, go through argon2 instead (see `password`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The operating system could not supply random bytes.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct EntropyError;

/// `n` bytes from the OS CSPRNG, base64url without padding.
pub fn random_token(n: usize) -> Result<String, EntropyError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|_| EntropyError)?;
    Ok(URL_SAFE_NO_PAD.encode(&buf))
}

/// `n` bytes from the OS CSPRNG as lowercase hex: for identifiers people type or paste into
/// a shell (client IDs, session IDs in `lanyard session revoke`), which must never start with
/// `-` the way base64url can.
pub fn random_id(n: usize) -> Result<String, EntropyError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|_| EntropyError)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// SHA-256 of `value`, base64url without padding: what the store keeps of a secret.
pub fn digest(value: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(value.as_bytes()))
}

/// Compares two digests in time independent of where they differ.
pub fn digests_match(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_and_distinct() {
        let a = random_token(32).unwrap();
        let b = random_token(32).unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn ids_are_hex() {
        let id = random_id(16).unwrap();
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn digest_is_sha256_base64url() {
        // SHA-256("abc") from FIPS 180-2, appendix B.1.
        assert_eq!(digest("abc"), "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0");
        assert!(digests_match(&digest("abc"), &digest("abc")));
        assert!(!digests_match(&digest("abc"), &digest("abd")));
        assert!(!digests_match("short", "longer"));
    }
}
