//! Password hashing with argon2id (RFC 9106), and the rules a new password must meet.
//!
//! Hashes are PHC strings that carry their own parameters, so a hash made under an older policy
//! still verifies; `Verified::needs_rehash` tells the caller to store a new one. Hashing is
//! CPU-heavy: servers call this from threads of their own, never on an async worker, and give
//! each thread a [`Scratch`] so argon2's memory is allocated once per thread, not per hash.

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// Argon2's working memory (`memory_kib` per hash), kept by a thread that hashes repeatedly.
///
/// Allocating it per hash costs page faults on every hash, and with glibc each freed
/// allocation of this size raises the threshold below which freed memory is kept rather than
/// returned, so the process stays large long after a burst of sign-ins.
#[derive(Default)]
pub struct Scratch(Vec<Block>);

impl Scratch {
    fn blocks(&mut self, n: usize) -> &mut [Block] {
        if self.0.len() < n {
            // Replaced, not grown: the contents need not survive, and `resize` would copy.
            self.0 = vec![Block::default(); n];
        }
        &mut self.0[..n]
    }
}

/// The bytes of a salt made for each new hash (RFC 9106 recommends 16).
const SALT_LEN: usize = 16;
/// The length of a new hash's output.
const OUTPUT_LEN: usize = 32;

/// The argon2id cost parameters and the minimum password length.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordPolicy {
    /// Memory cost in KiB (OWASP's floor for argon2id: 19 MiB).
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub min_length: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
            min_length: 8,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the password must be at least {0} characters")]
    TooShort(usize),
    #[error("the password must be at most 1024 characters")]
    TooLong,
    #[error("that password is one of the most common, and among the first an attacker tries")]
    Common,
    #[error("the password must not be the username")]
    SameAsUsername,
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    No,
    Yes { needs_rehash: bool },
}

/// Hashes and verifies passwords under one policy; build it once and share it.
#[derive(Clone)]
pub struct PasswordHasher {
    policy: PasswordPolicy,
    params: Params,
}

impl PasswordHasher {
    pub fn new(policy: PasswordPolicy) -> Result<Self, PasswordError> {
        let params = Params::new(
            policy.memory_kib,
            policy.iterations,
            policy.parallelism,
            Some(OUTPUT_LEN),
        )
        .map_err(|e| PasswordError::Params(e.to_string()))?;
        Ok(Self { policy, params })
    }

    pub fn policy(&self) -> &PasswordPolicy {
        &self.policy
    }

    /// Checks a new password against the policy.
    pub fn check_new(&self, password: &SecretString) -> Result<(), PasswordError> {
        let n = password.expose_secret().chars().count();
        if n < self.policy.min_length {
            return Err(PasswordError::TooShort(self.policy.min_length));
        }
        // Argon2 accepts any length, but a megabyte "password" is an attack, not a secret.
        if n > 1024 {
            return Err(PasswordError::TooLong);
        }
        Ok(())
    }

    /// Checks a new password for `username`: the policy, then the passwords attackers try first.
    pub fn check_new_for(
        &self,
        password: &SecretString,
        username: &str,
    ) -> Result<(), PasswordError> {
        self.check_new(password)?;
        let lower = password.expose_secret().to_lowercase();
        if lower == username.to_lowercase() {
            return Err(PasswordError::SameAsUsername);
        }
        if is_common(&lower) {
            return Err(PasswordError::Common);
        }
        Ok(())
    }

    /// A PHC string for `password` with a fresh random salt.
    pub fn hash(&self, password: &SecretString) -> Result<String, PasswordError> {
        self.hash_in(password, &mut Scratch::default())
    }

    /// [`Self::hash`] in `scratch`'s memory.
    pub fn hash_in(
        &self,
        password: &SecretString,
        scratch: &mut Scratch,
    ) -> Result<String, PasswordError> {
        let failed = |e: &dyn std::fmt::Display| PasswordError::Hash(e.to_string());
        let mut salt = [0u8; SALT_LEN];
        getrandom::fill(&mut salt).map_err(|e| failed(&e))?;
        let mut out = [0u8; OUTPUT_LEN];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
            .hash_password_into_with_memory(
                password.expose_secret().as_bytes(),
                &salt,
                &mut out,
                scratch.blocks(self.params.block_count()),
            )
            .map_err(|e| failed(&e))?;
        self.phc(&salt, &out)
    }

    /// A hash under the current parameters that no password matches: a random salt and a
    /// random output. Checking a password against it costs a full hash, which is what an
    /// unknown username is checked against, so it takes as long as a wrong password; making
    /// it costs no hash (and none of the memory one takes).
    pub fn unmatchable_hash(&self) -> Result<String, PasswordError> {
        let failed = |e: &dyn std::fmt::Display| PasswordError::Hash(e.to_string());
        let (mut salt, mut out) = ([0u8; SALT_LEN], [0u8; OUTPUT_LEN]);
        getrandom::fill(&mut salt).map_err(|e| failed(&e))?;
        getrandom::fill(&mut out).map_err(|e| failed(&e))?;
        self.phc(&salt, &out)
    }

    fn phc(&self, salt: &[u8], out: &[u8]) -> Result<String, PasswordError> {
        let failed = |e: &dyn std::fmt::Display| PasswordError::Hash(e.to_string());
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&self.params).map_err(|e| failed(&e))?,
            salt: Some(Salt::new(salt).map_err(|e| failed(&e))?),
            hash: Some(Output::new(out).map_err(|e| failed(&e))?),
        };
        Ok(phc.to_string())
    }

    /// Checks `password` against a stored PHC string. A malformed hash never verifies.
    pub fn verify(&self, password: &SecretString, stored: &str) -> Verified {
        self.verify_in(password, stored, &mut Scratch::default())
    }

    /// [`Self::verify`] in `scratch`'s memory.
    pub fn verify_in(
        &self,
        password: &SecretString,
        stored: &str,
        scratch: &mut Scratch,
    ) -> Verified {
        let Ok(parsed) = PasswordHash::new(stored) else {
            return Verified::No;
        };
        let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
            return Verified::No;
        };
        // Everything about the hash comes from the stored string, so older parameters verify.
        let (Ok(algorithm), Ok(version), Ok(params)) = (
            Algorithm::try_from(parsed.algorithm.as_str()),
            parsed.version.map_or(Ok(Version::V0x13), Version::try_from),
            Params::try_from(&parsed),
        ) else {
            return Verified::No;
        };
        let mut out = vec![0u8; expected.len()];
        let computed = Argon2::new(algorithm, version, params.clone())
            .hash_password_into_with_memory(
                password.expose_secret().as_bytes(),
                salt,
                &mut out,
                scratch.blocks(params.block_count()),
            );
        if computed.is_err() || !bool::from(out.ct_eq(expected.as_bytes())) {
            return Verified::No;
        }
        Verified::Yes {
            needs_rehash: !self.is_current(&parsed),
        }
    }

    fn is_current(&self, hash: &PasswordHash) -> bool {
        let p = &self.policy;
        let param = |name: &str| hash.params.get_decimal(name);
        hash.algorithm.as_str() == "argon2id"
            && hash.version == Some(0x13)
            && param("m") == Some(p.memory_kib)
            && param("t") == Some(p.iterations)
            && param("p") == Some(p.parallelism)
    }
}

/// Passwords from public breach-frequency lists, lowercased; shorter ones fail the length rule.
const COMMON: &str = include_str!("common_passwords.txt");

fn is_common(lowercased: &str) -> bool {
    COMMON.lines().any(|p| p == lowercased)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap(memory_kib: u32) -> PasswordHasher {
        PasswordHasher::new(PasswordPolicy {
            memory_kib,
            iterations: 1,
            ..Default::default()
        })
        .unwrap()
    }

    fn pw(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn hashes_verify_and_are_salted() {
        let h = cheap(64);
        let a = h.hash(&pw("correct horse")).unwrap();
        let b = h.hash(&pw("correct horse")).unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{a}");
        assert_ne!(a, b);
        assert_eq!(
            h.verify(&pw("correct horse"), &a),
            Verified::Yes {
                needs_rehash: false
            }
        );
        assert_eq!(h.verify(&pw("correct horsf"), &a), Verified::No);
        assert_eq!(h.verify(&pw("x"), "not a hash"), Verified::No);
    }

    #[test]
    fn scratch_memory_gives_the_reference_hashes() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let h = cheap(64);
        let reference = Argon2::new(Algorithm::Argon2id, Version::V0x13, h.params.clone());
        // One scratch for everything: what an earlier hash left in it must not matter.
        let mut scratch = Scratch::default();
        let ours = h.hash_in(&pw("correct horse"), &mut scratch).unwrap();
        let theirs = reference
            .hash_password(b"correct horse")
            .unwrap()
            .to_string();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(reference.verify_password(b"correct horse", &parsed).is_ok());
        assert!(
            reference
                .verify_password(b"correct horsf", &parsed)
                .is_err()
        );
        for _ in 0..2 {
            assert_eq!(
                h.verify_in(&pw("correct horse"), &theirs, &mut scratch),
                Verified::Yes {
                    needs_rehash: false
                }
            );
            assert_eq!(
                h.verify_in(&pw("correct horsf"), &theirs, &mut scratch),
                Verified::No
            );
        }
        // A larger stored cost grows the scratch; a smaller one uses part of it.
        let bigger = cheap(256).hash(&pw("correct horse")).unwrap();
        assert_eq!(
            h.verify_in(&pw("correct horse"), &bigger, &mut scratch),
            Verified::Yes { needs_rehash: true }
        );
        assert!(matches!(
            h.verify_in(&pw("correct horse"), &ours, &mut scratch),
            Verified::Yes { .. }
        ));
        // A hash without its salt or output never verifies.
        let truncated = ours.rsplit_once('$').unwrap().0;
        assert_eq!(
            h.verify_in(&pw("correct horse"), truncated, &mut scratch),
            Verified::No
        );
    }

    #[test]
    fn the_unmatchable_hash_is_current_and_matches_nothing() {
        let h = cheap(64);
        let a = h.unmatchable_hash().unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{a}");
        assert_ne!(a, h.unmatchable_hash().unwrap());
        for guess in ["", "correct horse", "not a real password"] {
            assert_eq!(h.verify(&pw(guess), &a), Verified::No);
        }
    }

    #[test]
    fn old_parameters_verify_and_ask_for_a_rehash() {
        let old = cheap(64).hash(&pw("correct horse")).unwrap();
        assert_eq!(
            cheap(128).verify(&pw("correct horse"), &old),
            Verified::Yes { needs_rehash: true }
        );
    }

    #[test]
    fn new_password_rules() {
        let h = cheap(64);
        assert!(matches!(
            h.check_new(&pw("short")),
            Err(PasswordError::TooShort(8))
        ));
        assert!(h.check_new(&pw("long enough")).is_ok());
        assert!(matches!(
            h.check_new(&pw(&"x".repeat(1025))),
            Err(PasswordError::TooLong)
        ));
    }

    #[test]
    fn common_passwords_and_the_username_are_refused() {
        let h = cheap(64);
        assert!(matches!(
            h.check_new_for(&pw("Password123"), "ada"),
            Err(PasswordError::Common)
        ));
        assert!(matches!(
            h.check_new_for(&pw("qwertyuiop"), "ada"),
            Err(PasswordError::Common)
        ));
        assert!(matches!(
            h.check_new_for(&pw("ada.lovelace"), "Ada.Lovelace"),
            Err(PasswordError::SameAsUsername)
        ));
        assert!(h.check_new_for(&pw("analytical engine"), "ada").is_ok());
    }

    #[test]
    fn bad_parameters_are_refused() {
        let bad = PasswordPolicy {
            memory_kib: 1,
            ..Default::default()
        };
        assert!(PasswordHasher::new(bad).is_err());
    }
}
