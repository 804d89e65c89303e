//! Configuration: defaults, then a TOML file, then `LANYARD_*` environment variables (nested keys
//! joined by `__`). Everything is checked here, at start-up, so a bad value stops Lanyard with a
//! message naming the key instead of failing on the first request that needs it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use lanyard_core::password::PasswordPolicy;
pub use lanyard_core::session::BindIp;
use lanyard_core::session::SessionPolicy;
use lanyard_core::throttle::ThrottlePolicy;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The public URL of this Lanyard: the OpenID issuer, and the origin of every page.
    pub issuer: Issuer,
    pub listen: SocketAddr,
    /// Reverse proxies whose `Forwarded` / `X-Forwarded-*` headers are believed (CIDRs or
    /// addresses). Empty: no forwarded header is believed.
    pub trusted_proxies: Vec<crate::proxy::TrustedProxy>,
    /// `sqlite://path` (created if missing) or `postgres://…`.
    pub database_url: String,
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub session: SessionConfig,
    pub password: PasswordPolicy,
    /// Sign-in throttling (see `lanyard_core::throttle`).
    pub throttle: ThrottlePolicy,
    pub keys: KeysConfig,
    pub tokens: TokensConfig,
    pub registration: RegistrationConfig,
    pub mfa: MfaConfig,
    pub logout: LogoutConfig,
    pub metrics: MetricsConfig,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` on this address instead of on `listen`.
    pub listen: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            issuer: Issuer("http://localhost:8080".to_owned()),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            trusted_proxies: Vec::new(),
            database_url: "sqlite://lanyard.db".to_owned(),
            database: DatabaseConfig::default(),
            http: HttpConfig::default(),
            log: LogConfig::default(),
            session: SessionConfig::default(),
            password: PasswordPolicy::default(),
            throttle: ThrottlePolicy::default(),
            keys: KeysConfig::default(),
            tokens: TokensConfig::default(),
            registration: RegistrationConfig::default(),
            mfa: MfaConfig::default(),
            logout: LogoutConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    pub max_connections: u32,
    /// How long to wait for a connection before calling the database unavailable.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes. Lanyard's forms and token requests are small.
    pub body_limit: usize,
    /// Longest time a request may take before it is answered with 408.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            body_limit: 64 * 1024,
            request_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `lanyard_server=debug,info`; `RUST_LOG` wins if set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".to_owned(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// A session unused this long ends.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A session ends this long after sign-in, however busy.
    #[serde(with = "humantime_serde")]
    pub lifetime: Duration,
    /// Concurrent sessions per user; past it the oldest ends.
    pub max_per_user: u32,
    pub bind_ip: BindIp,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30 * 60),
            lifetime: Duration::from_secs(12 * 3600),
            max_per_user: 10,
            bind_ip: BindIp::Off,
        }
    }
}

/// Signing keys: how their private parts are sealed at rest, and how rotation propagates.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// 32 bytes, base64url: the key that seals signing keys at rest. Every instance sharing a
    /// database needs the same one. Without it, `encryption_key_file` is used.
    pub encryption_key: Option<Redacted>,
    /// Where to read (or create, mode 0600) the encryption key when `encryption_key` is unset.
    /// Default: `lanyard.key` beside the SQLite database, or in the working directory.
    pub encryption_key_file: Option<std::path::PathBuf>,
}

/// Back-channel logout delivery.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogoutConfig {
    /// How often the worker looks for logouts to send.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long to keep retrying an app that does not answer before giving up.
    #[serde(with = "humantime_serde")]
    pub delivery_deadline: Duration,
}

impl Default for LogoutConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(5),
            delivery_deadline: Duration::from_secs(24 * 3600),
        }
    }
}

/// Second factors.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MfaConfig {
    /// Every user must pass a second factor; those without one enrol after their password.
    pub required: bool,
}

/// Dynamic Client Registration (RFC 7591): off unless a token is set.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationConfig {
    /// The bearer token `/register` requires (`lanyard client token` makes one).
    pub initial_access_token: Option<Redacted>,
}

/// A secret configuration value: never printed by `Debug`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(redacted)")
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokensConfig {
    #[serde(with = "humantime_serde")]
    pub id_token_lifetime: Duration,
    #[serde(with = "humantime_serde")]
    pub access_token_lifetime: Duration,
    #[serde(with = "humantime_serde")]
    pub refresh_token_lifetime: Duration,
    /// Require PKCE (S256) from confidential clients too, not only public ones.
    pub require_pkce: bool,
    /// Whether `offline_access` refresh tokens outlive the session they were issued under.
    pub offline_access: OfflineAccess,
}

/// What becomes of `offline_access` refresh tokens when their session ends. Either way a
/// password change or disabling the user revokes them.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OfflineAccess {
    /// They live on until they expire or are revoked: the app keeps access while the user is away.
    #[default]
    OutliveSession,
    /// They end with the session, like every other token.
    EndWithSession,
}

impl TokensConfig {
    /// Whether `token` may still be used although its session has ended.
    pub fn outlives_session(&self, token: &lanyard_core::grant::RefreshToken) -> bool {
        self.offline_access == OfflineAccess::OutliveSession && token.is_offline()
    }
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            id_token_lifetime: Duration::from_secs(3600),
            access_token_lifetime: Duration::from_secs(600),
            refresh_token_lifetime: Duration::from_secs(30 * 24 * 3600),
            require_pkce: true,
            offline_access: OfflineAccess::OutliveSession,
        }
    }
}

impl SessionConfig {
    pub fn policy(&self) -> SessionPolicy {
        SessionPolicy {
            idle_timeout: self.idle_timeout,
            lifetime: self.lifetime,
            max_per_user: self.max_per_user,
            bind_ip: self.bind_ip,
        }
    }
}

/// The issuer URL, without a trailing slash: `http://localhost:8080`, `https://id.example.org`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Issuer(String);

impl Issuer {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }

    /// `scheme://host[:port]`, as browsers send it in `Origin`.
    pub fn origin(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(u) => u.origin().ascii_serialization(),
            Err(_) => self.0.clone(),
        }
    }
}

impl TryFrom<String> for Issuer {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let url = url::Url::parse(&s).map_err(|e| format!("{s:?} is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(format!("{s:?} must be an http or https URL with a host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{s:?} must not have a query or fragment (OpenID Discovery §3)"
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("{s:?} must not carry a user name or password"));
        }
        // Pages and endpoints live at the root; serving under a path prefix is not supported.
        if url.path() != "/" {
            return Err(format!(
                "{s:?} must not have a path: Lanyard is served at the root of its host"
            ));
        }
        // The parsed form: scheme and host lowercased, so `HTTPS://` is https too.
        Ok(Self(url.as_str().trim_end_matches('/').to_owned()))
    }
}

impl From<Issuer> for String {
    fn from(i: Issuer) -> String {
        i.0
    }
}

/// A configuration that cannot be used, with a message naming the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    /// Reads the configuration: defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "the configuration file {} does not exist or is not a file",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // LANYARD_CONFIG names the file itself, and LANYARD_TEST_* belong to the test suite.
        let env = Env::prefixed("LANYARD_")
            .filter(|k| {
                let k = k.as_str().to_ascii_lowercase();
                k != "config" && !k.starts_with("test_")
            })
            .split("__");
        let config: Config = figment.merge(env).extract().map_err(describe)?;
        config.check()?;
        Ok(config)
    }

    /// The usual mistakes of a deployment that still works: said at start-up and by
    /// `lanyard doctor`.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let public = match self.listen.ip() {
            std::net::IpAddr::V4(ip) => !ip.is_loopback(),
            std::net::IpAddr::V6(ip) => !ip.is_loopback(),
        };
        if self.issuer.is_https() && self.trusted_proxies.is_empty() {
            out.push(
                "the issuer is https but trusted_proxies is empty: behind a TLS-terminating \
                 proxy, every client will appear to come from the proxy's address"
                    .to_owned(),
            );
        }
        if !self.issuer.is_https() && public {
            out.push(format!(
                "listening on {} with an http issuer: passwords and session cookies would \
                 cross the network in clear; put a TLS-terminating proxy in front and use an \
                 https issuer",
                self.listen
            ));
        }
        if self.trusted_proxies.iter().any(|p| p.is_everyone()) {
            out.push(
                "trusted_proxies trusts every address: any client can choose the IP address \
                 throttling and the audit log see"
                    .to_owned(),
            );
        }
        out
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad =
            |key: &str, why: &str| Err(ConfigError(format!("configuration key {key}: {why}")));
        let url = &self.database_url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres:")
            || url.starts_with("postgresql:"))
        {
            return bad("database_url", "expected sqlite://… or postgres://…");
        }
        if self.database.max_connections == 0 {
            return bad("database.max_connections", "must be at least 1");
        }
        if self.http.body_limit < 1024 {
            return bad("http.body_limit", "must be at least 1024 bytes");
        }
        if self.http.request_timeout.is_zero() {
            return bad("http.request_timeout", "must be more than zero");
        }
        if self.session.idle_timeout.is_zero() {
            return bad("session.idle_timeout", "must be more than zero");
        }
        if self.session.lifetime < self.session.idle_timeout {
            return bad("session.lifetime", "must be at least session.idle_timeout");
        }
        if self.session.max_per_user == 0 {
            return bad("session.max_per_user", "must be at least 1");
        }
        if let Err(e) = lanyard_core::password::PasswordHasher::new(self.password.clone()) {
            return bad("password", &e.to_string());
        }
        if self.password.min_length == 0 {
            return bad("password.min_length", "must be at least 1");
        }
        let t = &self.throttle;
        for (key, limit) in [
            ("throttle.per_account_and_ip", t.per_account_and_ip),
            ("throttle.per_ip", t.per_ip),
            ("throttle.per_account", t.per_account),
        ] {
            if limit.max == 0 || limit.window.is_zero() {
                return bad(key, "max and window must be more than zero");
            }
        }
        if t.base_penalty.is_zero() {
            return bad("throttle.base_penalty", "must be more than zero");
        }
        if let Some(key) = &self.keys.encryption_key
            && crate::keys::decode_encryption_key(&key.0).is_none()
        {
            return bad("keys.encryption_key", "must be 32 bytes, base64url-encoded");
        }
        if let Some(t) = &self.registration.initial_access_token
            && t.0.len() < 32
        {
            return bad(
                "registration.initial_access_token",
                "must be at least 32 characters",
            );
        }
        for (key, d) in [
            ("tokens.id_token_lifetime", self.tokens.id_token_lifetime),
            (
                "tokens.access_token_lifetime",
                self.tokens.access_token_lifetime,
            ),
            (
                "tokens.refresh_token_lifetime",
                self.tokens.refresh_token_lifetime,
            ),
        ] {
            if d < Duration::from_secs(60) {
                return bad(key, "must be at least a minute");
            }
        }
        if self.logout.poll_interval.is_zero() {
            return bad("logout.poll_interval", "must be more than zero");
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return bad("log.level", &e.to_string());
        }
        Ok(())
    }
}

/// Turns figment's errors into sentences that name the key and where its value came from.
fn describe(errors: figment::Error) -> ConfigError {
    let lines: Vec<String> = errors
        .into_iter()
        .map(|e| {
            let source = match &e.metadata {
                Some(md) => match &md.source {
                    Some(src) => format!(" (in {src})"),
                    None if md.name.contains("environment") && !e.path.is_empty() => {
                        format!(" (from LANYARD_{})", e.path.join("__").to_ascii_uppercase())
                    }
                    None => String::new(),
                },
                None => String::new(),
            };
            if e.path.is_empty() {
                format!("invalid configuration{source}: {}", e.kind)
            } else {
                format!("configuration key {}{source}: {}", e.path.join("."), e.kind)
            }
        })
        .collect();
    ConfigError(lines.join("\n"))
}

#[cfg(test)]
// figment's Jail returns its large error type by design.
#[allow(clippy::result_large_err)]
mod tests {
    use figment::Jail;

    use super::*;

    fn load_err(jail_setup: impl FnOnce(&mut Jail)) -> String {
        let mut out = String::new();
        Jail::expect_with(|jail| {
            jail_setup(jail);
            let file = Path::new("lanyard.toml");
            out = Config::load(file.exists().then_some(file))
                .unwrap_err()
                .to_string();
            Ok(())
        });
        out
    }

    #[test]
    fn zero_config_defaults() {
        Jail::expect_with(|_| {
            let c = Config::load(None).unwrap();
            assert_eq!(c.issuer.as_str(), "http://localhost:8080");
            assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(c.database_url, "sqlite://lanyard.db");
            assert_eq!(c.session.idle_timeout, Duration::from_secs(1800));
            assert_eq!(c.session.lifetime, Duration::from_secs(12 * 3600));
            assert_eq!(c.password.memory_kib, 19 * 1024);
            Ok(())
        });
    }

    #[test]
    fn file_then_environment() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "lanyard.toml",
                "issuer = \"https://id.example.org/\"\n[session]\nidle_timeout = \"10m\"\nmax_per_user = 3\n",
            )?;
            jail.set_env("LANYARD_SESSION__IDLE_TIMEOUT", "90s");
            jail.set_env("LANYARD_SESSION__BIND_IP", "network");
            jail.set_env("LANYARD_TEST_DATABASE_URL", "postgres://ignored");
            jail.set_env("LANYARD_CONFIG", "ignored.toml");
            let c = Config::load(Some(Path::new("lanyard.toml"))).unwrap();
            assert_eq!(c.issuer.as_str(), "https://id.example.org");
            assert!(c.issuer.is_https());
            let upper = Issuer::try_from("HTTPS://ID.Example.org/".to_owned()).unwrap();
            assert!(upper.is_https());
            assert_eq!(upper.as_str(), "https://id.example.org");
            assert_eq!(c.session.idle_timeout, Duration::from_secs(90));
            assert_eq!(c.session.max_per_user, 3);
            assert_eq!(c.session.bind_ip, BindIp::Network);
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = load_err(|j| j.set_env("LANYARD_SESSION__IDLE_TIMEOUT", "banana"));
        assert!(e.contains("session.idle_timeout"), "{e}");
        assert!(e.contains("LANYARD_SESSION__IDLE_TIMEOUT"), "{e}");
        let e = load_err(|j| j.set_env("LANYARD_LISTEN", "nowhere"));
        assert!(e.contains("configuration key listen"), "{e}");
        let e = load_err(|j| j.set_env("LANYARD_ISSUER", "https://id.example.org/?x=1"));
        assert!(e.contains("issuer") && e.contains("query"), "{e}");
        let e = load_err(|j| j.set_env("LANYARD_SESSION__BIND_IP", "sometimes"));
        assert!(e.contains("session.bind_ip"), "{e}");
        let e = load_err(|j| j.set_env("LANYARD_SESSION__LIFETIME", "1m"));
        assert!(e.contains("session.lifetime"), "{e}");
        let e = load_err(|j| j.set_env("LANYARD_ISSUER", "https://id.example.org/sso"));
        assert!(e.contains("issuer") && e.contains("path"), "{e}");
        let e = load_err(|j| j.set_env("LANYARD_DATABASE_URL", "mysql://x"));
        assert!(e.contains("database_url"), "{e}");
        let e = load_err(|j| j.set_env("LANYARD_PASSWORD__MEMORY_KIB", "1"));
        assert!(e.contains("password"), "{e}");
    }

    #[test]
    fn unknown_keys_and_corrupt_files_are_refused() {
        let e = load_err(|j| {
            j.create_file("lanyard.toml", "[sesion]\nidle_timeout = \"1m\"\n")
                .unwrap();
        });
        assert!(e.contains("sesion"), "{e}");
        let e = load_err(|j| {
            j.create_file("lanyard.toml", "issuer = \"unterminated\n")
                .unwrap();
        });
        assert!(e.contains("lanyard.toml"), "{e}");
        Jail::expect_with(|_| {
            let e = Config::load(Some(Path::new("missing.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("missing.toml") && e.contains("does not exist"),
                "{e}"
            );
            Ok(())
        });
    }
}
