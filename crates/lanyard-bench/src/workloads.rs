//! The workloads, as a relying app and a browser would run them.

use anyhow::{Context, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use url::Url;

use crate::client::{Agent, form_value, location};

/// Whose server is at the other end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provider {
    Lanyard,
    /// panva's oidc-provider as set up in `tests/peers/oidc-provider`.
    OidcProvider,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// 1. The discovery document and the JWKS.
    Discovery,
    /// 2. A client_credentials token.
    ClientCredentials,
    /// 3. With a session: /authorize (PKCE) → code → /token → /userinfo.
    Sso,
    /// 4. A refresh, rotating the refresh token.
    Refresh,
    /// 5. Introspection of an access token.
    Introspection,
    /// 6. Password sign-in through the login form, from a fresh browser.
    PasswordSignIn,
    /// 7. A request that only checks the session cookie.
    SessionCheck,
}

impl Workload {
    pub const ALL: [Self; 7] = [
        Self::Discovery,
        Self::ClientCredentials,
        Self::Sso,
        Self::Refresh,
        Self::Introspection,
        Self::PasswordSignIn,
        Self::SessionCheck,
    ];

    pub fn number(self) -> u8 {
        match self {
            Self::Discovery => 1,
            Self::ClientCredentials => 2,
            Self::Sso => 3,
            Self::Refresh => 4,
            Self::Introspection => 5,
            Self::PasswordSignIn => 6,
            Self::SessionCheck => 7,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Discovery => "discovery + JWKS",
            Self::ClientCredentials => "client_credentials",
            Self::Sso => "SSO: authorize+token+userinfo",
            Self::Refresh => "refresh (rotating)",
            Self::Introspection => "introspection",
            Self::PasswordSignIn => "password sign-in",
            Self::SessionCheck => "session check",
        }
    }
}

pub struct Credentials {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
    pub username: String,
    pub users: Option<usize>,
    pub password: String,
}

impl Credentials {
    fn username(&self, worker: usize) -> String {
        match self.users {
            Some(n) if n > 0 => format!("{}{}", self.username, worker % n),
            _ => self.username.clone(),
        }
    }
}

/// The provider's endpoints, from its discovery document.
pub struct Target {
    pub provider: Provider,
    issuer: Url,
    jwks: Url,
    authorize: Url,
    token: Url,
    userinfo: Url,
    introspect: Option<Url>,
    creds: Credentials,
}

fn endpoint(meta: &serde_json::Value, name: &str) -> anyhow::Result<Url> {
    let s = meta[name]
        .as_str()
        .with_context(|| format!("discovery has no {name}"))?;
    Ok(Url::parse(s)?)
}

impl Target {
    pub async fn discover(
        issuer: &str,
        provider: Provider,
        creds: Credentials,
    ) -> anyhow::Result<Self> {
        let issuer = Url::parse(issuer.trim_end_matches('/'))?;
        let meta: serde_json::Value = reqwest::get(
            format!("{issuer}/.well-known/openid-configuration").replace("//.well", "/.well"),
        )
        .await?
        .error_for_status()?
        .json()
        .await?;
        Ok(Self {
            provider,
            jwks: endpoint(&meta, "jwks_uri")?,
            authorize: endpoint(&meta, "authorization_endpoint")?,
            token: endpoint(&meta, "token_endpoint")?,
            userinfo: endpoint(&meta, "userinfo_endpoint")?,
            introspect: endpoint(&meta, "introspection_endpoint").ok(),
            issuer,
            creds,
        })
    }

    fn at(&self, path: &str) -> anyhow::Result<Url> {
        let base = self.issuer.as_str().trim_end_matches('/');
        Ok(Url::parse(&format!("{base}{path}"))?)
    }

    /// Why this provider cannot run `w`, if it cannot.
    pub fn unsupported(&self, w: Workload) -> Option<&'static str> {
        match w {
            Workload::Introspection if self.introspect.is_none() => {
                Some("no introspection endpoint")
            }
            Workload::SessionCheck if self.provider == Provider::OidcProvider => {
                Some("no endpoint that only checks the session")
            }
            _ => None,
        }
    }
}

/// What a worker holds between operations.
pub struct Worker {
    agent: Agent,
    username: String,
    access: Option<String>,
    refresh: Option<String>,
}

fn random() -> anyhow::Result<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

/// Gets a worker ready for `w`: signed in, holding tokens, as the workload needs.
pub async fn prepare(t: &Target, w: Workload, index: usize) -> anyhow::Result<Worker> {
    let mut worker = Worker {
        agent: Agent::new()?,
        username: t.creds.username(index),
        access: None,
        refresh: None,
    };
    match w {
        Workload::Sso | Workload::SessionCheck => {
            sign_in(t, &mut worker.agent, &worker.username).await?
        }
        Workload::Refresh => {
            sign_in(t, &mut worker.agent, &worker.username).await?;
            let tokens = code_flow(t, &mut worker.agent).await?;
            worker.refresh = tokens["refresh_token"].as_str().map(str::to_owned);
            ensure!(
                worker.refresh.is_some(),
                "the code flow gave no refresh token"
            );
        }
        Workload::Introspection => {
            let tokens = client_credentials(t, &mut worker.agent).await?;
            worker.access = tokens["access_token"].as_str().map(str::to_owned);
        }
        _ => {}
    }
    Ok(worker)
}

/// One operation of `w`.
pub async fn op(t: &Target, w: Workload, worker: &mut Worker) -> anyhow::Result<()> {
    let agent = &mut worker.agent;
    match w {
        Workload::Discovery => {
            let meta = t.at("/.well-known/openid-configuration")?;
            for url in [meta, t.jwks.clone()] {
                let r = agent.send(agent.http.get(url)).await?;
                ensure!(r.status() == 200, "{} answered {}", r.url(), r.status());
                r.bytes().await?;
            }
        }
        Workload::ClientCredentials => {
            client_credentials(t, agent).await?;
        }
        Workload::Sso => {
            let tokens = code_flow(t, agent).await?;
            let access = tokens["access_token"].as_str().context("no access token")?;
            let r = agent
                .send(agent.http.get(t.userinfo.clone()).bearer_auth(access))
                .await?;
            ensure!(r.status() == 200, "userinfo answered {}", r.status());
            r.bytes().await?;
        }
        Workload::Refresh => {
            let refresh = worker.refresh.take().context("no refresh token")?;
            let form = [("grant_type", "refresh_token"), ("refresh_token", &refresh)];
            let tokens = token(t, agent, &form).await?;
            worker.refresh = tokens["refresh_token"].as_str().map(str::to_owned);
        }
        Workload::Introspection => {
            let url = t.introspect.clone().context("no introspection endpoint")?;
            let access = worker.access.as_deref().context("no access token")?;
            let r = agent
                .send(
                    agent
                        .http
                        .post(url)
                        .basic_auth(&t.creds.client_id, Some(&t.creds.client_secret))
                        .form(&[("token", access)]),
                )
                .await?;
            ensure!(r.status() == 200, "introspection answered {}", r.status());
            let body: serde_json::Value = r.json().await?;
            ensure!(body["active"] == true, "the token is not active");
        }
        Workload::PasswordSignIn => {
            agent.forget_cookies();
            sign_in(t, agent, &worker.username).await?;
        }
        Workload::SessionCheck => {
            let r = agent.send(agent.http.get(t.at("/session/check")?)).await?;
            ensure!(r.status() == 204, "session check answered {}", r.status());
        }
    }
    Ok(())
}

async fn sign_in(t: &Target, agent: &mut Agent, username: &str) -> anyhow::Result<()> {
    match t.provider {
        Provider::Lanyard => {
            let login = t.at("/login")?;
            let page = agent.send(agent.http.get(login.clone())).await?;
            let html = page.text().await?;
            let csrf = form_value(&html, "csrf").context("no CSRF token on the login page")?;
            let form = [
                ("csrf", csrf.as_str()),
                ("username", username),
                ("password", t.creds.password.as_str()),
            ];
            let r = agent.send(agent.http.post(login).form(&form)).await?;
            ensure!(r.status() == 303, "sign-in answered {}", r.status());
        }
        // Its login lives inside an authorization request: /auth → the interaction's form →
        // back to /auth, which ends with a code for the client.
        Provider::OidcProvider => {
            let (url, _) = authorize_url(t)?;
            let r = agent.send(agent.http.get(url.clone())).await?;
            let form_url = location(&r, &url)?;
            let page = agent.send(agent.http.get(form_url.clone())).await?;
            ensure!(
                page.status() == 200,
                "the login form answered {}",
                page.status()
            );
            page.bytes().await?;
            let action = Url::parse(&format!("{form_url}/login"))?;
            let form = [
                ("username", username),
                ("password", t.creds.password.as_str()),
            ];
            let r = agent
                .send(agent.http.post(action.clone()).form(&form))
                .await?;
            ensure!(
                r.status().is_redirection(),
                "sign-in answered {}",
                r.status()
            );
            let resume = location(&r, &action)?;
            let r = agent.send(agent.http.get(resume.clone())).await?;
            let back = location(&r, &resume)?;
            ensure!(
                back.as_str().starts_with(&t.creds.redirect_uri),
                "sign-in ended at {back}"
            );
        }
    }
    Ok(())
}

/// An authorization request for the client; returns it and its PKCE verifier.
fn authorize_url(t: &Target) -> anyhow::Result<(Url, String)> {
    let verifier = random()?;
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let mut url = t.authorize.clone();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &t.creds.client_id)
        .append_pair("redirect_uri", &t.creds.redirect_uri)
        .append_pair("scope", "openid")
        .append_pair("state", &random()?)
        .append_pair("nonce", &random()?)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    Ok((url, verifier))
}

async fn token(
    t: &Target,
    agent: &mut Agent,
    form: &[(&str, &str)],
) -> anyhow::Result<serde_json::Value> {
    let r = agent
        .send(
            agent
                .http
                .post(t.token.clone())
                .basic_auth(&t.creds.client_id, Some(&t.creds.client_secret))
                .form(form),
        )
        .await?;
    let status = r.status();
    let body: serde_json::Value = r.json().await?;
    if status != 200 {
        bail!("token endpoint answered {status}: {body}");
    }
    Ok(body)
}

async fn client_credentials(t: &Target, agent: &mut Agent) -> anyhow::Result<serde_json::Value> {
    token(t, agent, &[("grant_type", "client_credentials")]).await
}

/// /authorize with an existing session, then the code at /token.
async fn code_flow(t: &Target, agent: &mut Agent) -> anyhow::Result<serde_json::Value> {
    let (url, verifier) = authorize_url(t)?;
    let r = agent.send(agent.http.get(url.clone())).await?;
    ensure!(
        r.status().is_redirection(),
        "authorize answered {}",
        r.status()
    );
    let back = location(&r, &url)?;
    ensure!(
        back.as_str().starts_with(&t.creds.redirect_uri),
        "authorize sent the browser to {back}"
    );
    let code = back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .with_context(|| format!("no code in {back}"))?;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", t.creds.redirect_uri.as_str()),
        ("code_verifier", verifier.as_str()),
    ];
    token(t, agent, &form).await
}
