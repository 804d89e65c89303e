//! Password hashing with argon2id (RFC 9106), and the rules a new password must meet.
//!
//! Hashes are PHC strings that carry their own parameters, so a hash made under an older policy
//! still verifies; `Verified::needs_rehash` tells the caller to store a new one. Hashing is
//! CPU-heavy: servers call this from the blocking pool, never on an async worker.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};

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
    argon2: Argon2<'static>,
}

impl PasswordHasher {
    pub fn new(policy: PasswordPolicy) -> Result<Self, PasswordError> {
        let params = Params::new(
            policy.memory_kib,
            policy.iterations,
            policy.parallelism,
            None,
        )
        .map_err(|e| PasswordError::Params(e.to_string()))?;
        Ok(Self {
            policy,
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
        })
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
        self.argon2
            .hash_password(password.expose_secret().as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| PasswordError::Hash(e.to_string()))
    }

    /// Checks `password` against a stored PHC string. A malformed hash never verifies.
    pub fn verify(&self, password: &SecretString, stored: &str) -> Verified {
        let Ok(parsed) = PasswordHash::new(stored) else {
            return Verified::No;
        };
        if self
            .argon2
            .verify_password(password.expose_secret().as_bytes(), &parsed)
            .is_err()
        {
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
