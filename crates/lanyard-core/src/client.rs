//! Relying parties (OAuth clients): how they are registered and what a registration may say.
//!
//! Invariants: a confidential client's secret has 256 bits from the OS CSPRNG, is shown once
//! and stored only as its SHA-256; every URI Lanyard will ever send a browser or a request to is
//! absolute, has no fragment, and is https unless it points at the local machine
//! (RFC 9700 §2.1, RFC 8252 §7.3). Redirect URIs are kept exactly as registered, because
//! `/authorize` compares them as strings (RFC 9700 §4.1.3).

use secrecy::SecretString;

use crate::UnixTime;
use crate::secret::{self, EntropyError};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientInputError {
    #[error("the client name must be 1 to 100 characters without control characters")]
    Name,
    #[error("{uri:?} is not an acceptable {what}: {why}")]
    Uri {
        what: &'static str,
        uri: String,
        why: &'static str,
    },
    #[error(
        "unknown grant type {0:?} (expected authorization_code, refresh_token or client_credentials)"
    )]
    GrantType(String),
    #[error("unknown ID token algorithm {0:?} (expected RS256, ES256 or EdDSA)")]
    IdTokenAlg(String),
    #[error("a client using authorization_code needs at least one redirect URI")]
    NoRedirectUri,
    #[error("a public client cannot use client_credentials: it has no secret to authenticate with")]
    PublicClientCredentials,
    #[error("refresh_token needs authorization_code: refresh tokens come from the code flow")]
    RefreshWithoutCode,
}

/// An OAuth grant type a client may use (RFC 6749 §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
}

impl GrantType {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
            Self::ClientCredentials => "client_credentials",
        }
    }
}

impl std::str::FromStr for GrantType {
    type Err = ClientInputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "authorization_code" => Ok(Self::AuthorizationCode),
            "refresh_token" => Ok(Self::RefreshToken),
            "client_credentials" => Ok(Self::ClientCredentials),
            other => Err(ClientInputError::GrantType(other.to_owned())),
        }
    }
}

/// The algorithm a client wants its ID tokens signed with. RS256 unless it says otherwise
/// (OpenID Connect Core §2, `id_token_signed_response_alg`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub enum IdTokenAlg {
    #[default]
    RS256,
    ES256,
    EdDSA,
}

impl IdTokenAlg {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
        }
    }
}

impl std::str::FromStr for IdTokenAlg {
    type Err = ClientInputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "RS256" => Ok(Self::RS256),
            "ES256" => Ok(Self::ES256),
            "EdDSA" => Ok(Self::EdDSA),
            other => Err(ClientInputError::IdTokenAlg(other.to_owned())),
        }
    }
}

/// The public, opaque identifier of a client.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ClientId(String);

impl ClientId {
    pub fn generate() -> Result<Self, EntropyError> {
        Ok(Self(secret::random_id(16)?))
    }

    /// A client id as a caller gave it, to look up; unknown ids simply find nothing.
    pub fn from_stored(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client as stored.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Client {
    #[serde(rename = "client_id")]
    pub id: ClientId,
    pub name: String,
    /// SHA-256 of the secret; `None` for public clients.
    #[serde(skip)]
    pub secret_hash: Option<String>,
    pub public: bool,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub backchannel_logout_uri: Option<String>,
    pub frontchannel_logout_uri: Option<String>,
    pub grant_types: Vec<GrantType>,
    pub id_token_alg: IdTokenAlg,
    pub skip_consent: bool,
    pub created_at: UnixTime,
    /// Users must pass a second factor to sign in to this client.
    pub require_mfa: bool,
}

impl Client {
    pub fn allows(&self, grant: GrantType) -> bool {
        self.grant_types.contains(&grant)
    }

    /// Whether `presented` is this client's secret, compared in constant time.
    pub fn secret_matches(&self, presented: &str) -> bool {
        match &self.secret_hash {
            Some(hash) => secret::digests_match(hash, &secret::digest(presented)),
            None => false,
        }
    }
}

/// What an operator or a registration request asks for.
#[derive(Clone, Debug, Default)]
pub struct ClientRegistration {
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub backchannel_logout_uri: Option<String>,
    pub frontchannel_logout_uri: Option<String>,
    pub public: bool,
    pub skip_consent: bool,
    pub id_token_alg: IdTokenAlg,
    /// Empty means the default: authorization_code and refresh_token.
    pub grant_types: Vec<GrantType>,
    pub require_mfa: bool,
}

/// A validated client, ready to store, and its secret in clear for the one time it is shown.
pub struct ValidClient {
    pub client: Client,
    pub secret: Option<SecretString>,
}

impl ClientRegistration {
    pub fn validate(self, now: UnixTime) -> Result<ValidClient, RegistrationError> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(ClientInputError::Name.into());
        }
        let mut grant_types = Vec::new();
        let requested = if self.grant_types.is_empty() {
            vec![GrantType::AuthorizationCode, GrantType::RefreshToken]
        } else {
            self.grant_types
        };
        for g in requested {
            if !grant_types.contains(&g) {
                grant_types.push(g);
            }
        }
        let has_code = grant_types.contains(&GrantType::AuthorizationCode);
        if self.public && grant_types.contains(&GrantType::ClientCredentials) {
            return Err(ClientInputError::PublicClientCredentials.into());
        }
        if grant_types.contains(&GrantType::RefreshToken) && !has_code {
            return Err(ClientInputError::RefreshWithoutCode.into());
        }
        let redirect_uris = uris("redirect URI", self.redirect_uris)?;
        if has_code && redirect_uris.is_empty() {
            return Err(ClientInputError::NoRedirectUri.into());
        }
        let post_logout_redirect_uris =
            uris("post-logout redirect URI", self.post_logout_redirect_uris)?;
        let backchannel_logout_uri = self
            .backchannel_logout_uri
            .map(|u| check_uri("back-channel logout URI", u))
            .transpose()?;
        let frontchannel_logout_uri = self
            .frontchannel_logout_uri
            .map(|u| check_uri("front-channel logout URI", u))
            .transpose()?;

        let (secret, secret_hash) = if self.public {
            (None, None)
        } else {
            let s = secret::random_token(32)?;
            let hash = secret::digest(&s);
            (Some(SecretString::from(s)), Some(hash))
        };
        let client = Client {
            id: ClientId::generate()?,
            name: name.to_owned(),
            secret_hash,
            public: self.public,
            redirect_uris,
            post_logout_redirect_uris,
            backchannel_logout_uri,
            frontchannel_logout_uri,
            grant_types,
            id_token_alg: self.id_token_alg,
            skip_consent: self.skip_consent,
            created_at: now,
            require_mfa: self.require_mfa,
        };
        Ok(ValidClient { client, secret })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error(transparent)]
    Input(#[from] ClientInputError),
    #[error(transparent)]
    Entropy(#[from] EntropyError),
}

fn uris(what: &'static str, list: Vec<String>) -> Result<Vec<String>, ClientInputError> {
    let mut out = Vec::with_capacity(list.len());
    for uri in list {
        let uri = check_uri(what, uri)?;
        if !out.contains(&uri) {
            out.push(uri);
        }
    }
    Ok(out)
}

/// Checks a URI Lanyard will send a browser or a request to, and returns it as given.
pub fn check_uri(what: &'static str, uri: String) -> Result<String, ClientInputError> {
    let err = |why| ClientInputError::Uri {
        what,
        uri: uri.clone(),
        why,
    };
    if uri.len() > 2000 {
        return Err(err("it is longer than 2000 characters"));
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err("it contains spaces or control characters"));
    }
    let parsed = url::Url::parse(&uri).map_err(|_| err("it is not an absolute URI"))?;
    if parsed.fragment().is_some() {
        return Err(err("it has a fragment (#...)"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(err("it carries a user name or password"));
    }
    match parsed.scheme() {
        "https" if parsed.host().is_some() => Ok(uri),
        "http" if is_loopback(&parsed) => Ok(uri),
        "http" => Err(err(
            "plain http is only allowed for localhost and loopback addresses",
        )),
        _ => Err(err("it must use https (or http for localhost)")),
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn reg(uris: &[&str]) -> ClientRegistration {
        ClientRegistration {
            name: "App".into(),
            redirect_uris: uris.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn accepts_https_and_loopback_http() {
        for ok in [
            "https://app.example/cb",
            "https://app.example:8443/cb?x=1",
            "http://localhost:3000/cb",
            "http://127.0.0.1/cb",
            "http://[::1]:9/cb",
        ] {
            assert_eq!(
                check_uri("redirect URI", ok.into()).as_deref(),
                Ok(ok),
                "{ok}"
            );
        }
    }

    #[test]
    fn refuses_bad_uris() {
        for bad in [
            "/relative",
            "app.example/cb",
            "https://app.example/cb#frag",
            "https://app.example/cb#",
            "http://app.example/cb",
            "http://localhost.evil.example/cb",
            "javascript:alert(1)",
            "ftp://app.example/",
            "https://user:pw@app.example/",
            "https://app.example/ cb",
            "",
        ] {
            assert!(check_uri("redirect URI", bad.into()).is_err(), "{bad}");
        }
        assert!(
            check_uri(
                "redirect URI",
                format!("https://a.example/{}", "x".repeat(2000))
            )
            .is_err()
        );
    }

    #[test]
    fn confidential_clients_get_a_256_bit_secret_stored_hashed() {
        let v = reg(&["https://app.example/cb"])
            .validate(UnixTime::from_secs(1))
            .unwrap();
        let secret = v.secret.unwrap();
        assert_eq!(secret.expose_secret().len(), 43);
        let hash = v.client.secret_hash.clone().unwrap();
        assert_ne!(&hash, secret.expose_secret());
        assert!(v.client.secret_matches(secret.expose_secret()));
        assert!(!v.client.secret_matches("guess"));
        assert_eq!(
            v.client.grant_types,
            [GrantType::AuthorizationCode, GrantType::RefreshToken]
        );
        assert_eq!(v.client.id_token_alg, IdTokenAlg::RS256);
    }

    #[test]
    fn public_clients_have_no_secret() {
        let mut r = reg(&["http://localhost/cb"]);
        r.public = true;
        let v = r.validate(UnixTime::from_secs(1)).unwrap();
        assert!(v.secret.is_none());
        assert!(!v.client.secret_matches(""));
    }

    #[test]
    fn grant_rules() {
        let mut r = reg(&[]);
        assert!(matches!(
            r.clone().validate(UnixTime::from_secs(1)),
            Err(RegistrationError::Input(ClientInputError::NoRedirectUri))
        ));
        r.grant_types = vec![GrantType::ClientCredentials];
        assert!(r.clone().validate(UnixTime::from_secs(1)).is_ok());
        r.public = true;
        assert!(matches!(
            r.clone().validate(UnixTime::from_secs(1)),
            Err(RegistrationError::Input(
                ClientInputError::PublicClientCredentials
            ))
        ));
        r.public = false;
        r.grant_types = vec![GrantType::RefreshToken, GrantType::ClientCredentials];
        assert!(matches!(
            r.validate(UnixTime::from_secs(1)),
            Err(RegistrationError::Input(
                ClientInputError::RefreshWithoutCode
            ))
        ));
    }

    #[test]
    fn names_and_enums() {
        let mut r = reg(&["https://a.example/"]);
        r.name = " ".into();
        assert!(r.validate(UnixTime::from_secs(1)).is_err());
        assert_eq!("EdDSA".parse::<IdTokenAlg>(), Ok(IdTokenAlg::EdDSA));
        assert!("HS256".parse::<IdTokenAlg>().is_err());
        assert!("implicit".parse::<GrantType>().is_err());
    }
}
