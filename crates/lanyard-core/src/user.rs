//! Users: the people who sign in. A user's `id` is random and never changes; it becomes the
//! OpenID Connect `sub`, so it must not reveal or depend on the username.

use crate::UnixTime;
use crate::secret::{EntropyError, random_id};

/// Why a user attribute was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UserInputError {
    #[error(
        "the username must be 1 to 64 characters: lowercase letters, digits, '.', '_', '-' or '@'"
    )]
    Username,
    #[error("the email address must look like name@example.org and be at most 254 characters")]
    Email,
    #[error("the display name must be 1 to 128 characters without control characters")]
    DisplayName,
}

/// The stable, opaque identifier of a user (the OIDC subject).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn generate() -> Result<Self, EntropyError> {
        Ok(Self(random_id(16)?))
    }

    /// A value read back from the store, which only ever holds generated ids.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A username. Compared case-insensitively by storing it lowercased, so "Alice" and "alice" are
/// one account and cannot be registered twice to confuse people.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    pub fn parse(input: &str) -> Result<Self, UserInputError> {
        let s = input.trim().to_ascii_lowercase();
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
        if s.is_empty() || s.len() > 64 || !s.chars().all(ok_char) {
            return Err(UserInputError::Username);
        }
        Ok(Self(s))
    }

    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Username {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An email address, checked only for shape: deliverability is not Lanyard's to judge.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(input: &str) -> Result<Self, UserInputError> {
        let s = input.trim();
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(UserInputError::Email);
        };
        let bad = |c: char| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',');
        if s.len() > 254
            || local.is_empty()
            || domain.is_empty()
            || domain.starts_with('.')
            || domain.ends_with('.')
            || s.chars().any(bad)
        {
            return Err(UserInputError::Email);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name shown to people ("Ada Lovelace").
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(input: &str) -> Result<Self, UserInputError> {
        let s = input.trim();
        if s.is_empty() || s.chars().count() > 128 || s.chars().any(char::is_control) {
            return Err(UserInputError::DisplayName);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A user as stored.
#[derive(Clone, Debug, serde::Serialize)]
pub struct User {
    pub id: UserId,
    pub username: Username,
    pub email: Email,
    pub display_name: Option<DisplayName>,
    #[serde(skip)]
    pub password_hash: String,
    pub disabled: bool,
    pub created_at: UnixTime,
}

/// A user about to be created; the password is already hashed.
#[derive(Clone, Debug)]
pub struct NewUser {
    pub id: UserId,
    pub username: Username,
    pub email: Email,
    pub display_name: Option<DisplayName>,
    pub password_hash: String,
    pub created_at: UnixTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(Username::parse(" Alice ").unwrap().as_str(), "alice");
        assert_eq!(Username::parse("a.b_c-d@e").unwrap().as_str(), "a.b_c-d@e");
        for bad in [
            "",
            "   ",
            "al ice",
            "ålice",
            "a/b",
            &"a".repeat(65),
            "a\u{0}b",
        ] {
            assert_eq!(
                Username::parse(bad),
                Err(UserInputError::Username),
                "{bad:?}"
            );
        }
        assert!(Username::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn emails() {
        assert!(Email::parse("ada@example.org").is_ok());
        for bad in [
            "",
            "ada",
            "@example.org",
            "ada@",
            "ada@.org",
            "a da@x.org",
            "a@b.",
            "<a@b>",
        ] {
            assert_eq!(Email::parse(bad), Err(UserInputError::Email), "{bad:?}");
        }
        assert!(Email::parse(&format!("{}@example.org", "a".repeat(250))).is_err());
    }

    #[test]
    fn display_names() {
        assert_eq!(
            DisplayName::parse(" Ada Lovelace ").unwrap().as_str(),
            "Ada Lovelace"
        );
        assert!(DisplayName::parse("").is_err());
        assert!(DisplayName::parse("a\nb").is_err());
        assert!(DisplayName::parse(&"é".repeat(128)).is_ok());
        assert!(DisplayName::parse(&"é".repeat(129)).is_err());
    }

    #[test]
    fn user_ids_are_random() {
        let a = UserId::generate().unwrap();
        assert_ne!(a, UserId::generate().unwrap());
        assert_eq!(a.as_str().len(), 32);
    }
}
