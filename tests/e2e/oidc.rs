//! Lanyard as an OpenID Provider, driven by a certified relying-party library (`openidconnect`)
//! and a cookie-keeping browser through the real login and consent pages.

use lanyard_core::client::{ClientRegistration, GrantType, IdTokenAlg};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata,
    CoreUserInfoClaims,
};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};

use crate::harness::{Browser, TestDb, TestServer, register_client};

const PW: &str = "correct horse battery";
const REDIRECT: &str = "http://localhost:9999/callback";

type Rp = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn registration(name: &str, alg: IdTokenAlg) -> ClientRegistration {
    ClientRegistration {
        name: name.into(),
        redirect_uris: vec![REDIRECT.into()],
        skip_consent: true,
        id_token_alg: alg,
        ..Default::default()
    }
}

async fn relying_party(server: &TestServer, id: &str, secret: Option<&str>) -> Rp {
    let meta =
        CoreProviderMetadata::discover_async(IssuerUrl::new(server.base.clone()).unwrap(), &http())
            .await
            .expect("discovery");
    CoreClient::from_provider_metadata(
        meta,
        ClientId::new(id.into()),
        secret.map(|s| ClientSecret::new(s.into())),
    )
    .set_redirect_uri(RedirectUrl::new(REDIRECT.into()).unwrap())
}

fn alg_of(alg: IdTokenAlg) -> CoreJwsSigningAlgorithm {
    match alg {
        IdTokenAlg::RS256 => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        IdTokenAlg::ES256 => CoreJwsSigningAlgorithm::EcdsaP256Sha256,
        IdTokenAlg::EdDSA => CoreJwsSigningAlgorithm::EdDsa,
    }
}

struct Started {
    url: String,
    csrf: CsrfToken,
    nonce: Nonce,
    verifier: PkceCodeVerifier,
}

fn start(rp: &Rp, extra: &[(&str, &str)]) -> Started {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut req = rp
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("email".into()))
        .add_scope(Scope::new("offline_access".into()))
        .set_pkce_challenge(challenge);
    for (k, v) in extra {
        req = req.add_extra_param(*k, *v);
    }
    let (url, csrf, nonce) = req.url();
    Started {
        url: url.to_string(),
        csrf,
        nonce,
        verifier,
    }
}

fn code_from(url: &url::Url, csrf: &CsrfToken, issuer: &str) -> String {
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert!(url.as_str().starts_with(REDIRECT), "{url}");
    assert_eq!(q.get("state"), Some(csrf.secret()), "state comes back");
    assert_eq!(
        q.get("iss").map(String::as_str),
        Some(issuer),
        "RFC 9207 iss"
    );
    q.get("code")
        .unwrap_or_else(|| panic!("no code in {url}"))
        .clone()
}

fn error_from(url: &url::Url) -> String {
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert!(url.as_str().starts_with(REDIRECT), "{url}");
    q.get("error")
        .unwrap_or_else(|| panic!("no error in {url}"))
        .clone()
}

async fn full_flow(alg: IdTokenAlg) {
    let db = TestDb::new().await;
    let server = TestServer::start_on_localhost(&db).await;
    let ada = server.add_user("ada", PW).await;
    let mut reg = registration("Wiki", alg);
    reg.grant_types = vec![GrantType::AuthorizationCode, GrantType::RefreshToken];
    let (id, secret) = register_client(&server.store, reg).await;
    let rp = relying_party(&server, &id, secret.as_deref()).await;
    let http = http();

    let mut browser = Browser::new(&server);
    let s = start(&rp, &[]);
    let back = browser
        .authorize(&s.url, Some(("ada", PW)), None)
        .await
        .unwrap();
    let code = code_from(&back, &s.csrf, &server.base);

    let tokens = rp
        .exchange_code(AuthorizationCode::new(code.clone()))
        .unwrap()
        .set_pkce_verifier(s.verifier)
        .request_async(&http)
        .await
        .expect("code exchange");
    let verifier = rp.id_token_verifier().set_allowed_algs(vec![alg_of(alg)]);
    let id_token = tokens.id_token().expect("an ID token");
    let claims = id_token
        .claims(&verifier, &s.nonce)
        .expect("a valid ID token");
    assert_eq!(
        claims.subject().as_str(),
        ada.as_str(),
        "sub is the opaque user id"
    );
    assert_ne!(claims.subject().as_str(), "ada");
    assert_eq!(claims.preferred_username().unwrap().as_str(), "ada");
    assert_eq!(claims.email().unwrap().as_str(), "ada@example.org");
    assert!(claims.auth_time().is_some());
    assert_eq!(claims.authorized_party().unwrap().as_str(), id);
    let expected = claims.access_token_hash().expect("at_hash");
    let actual = AccessTokenHash::from_token(
        tokens.access_token(),
        id_token.signing_alg().unwrap(),
        id_token.signing_key(&verifier).unwrap(),
    )
    .unwrap();
    assert_eq!(&actual, expected);
    let raw_claims: serde_json::Value = {
        use base64::Engine as _;
        let part = id_token.to_string().split('.').nth(1).unwrap().to_owned();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    assert!(raw_claims["sid"].is_string(), "sid: {raw_claims}");
    assert_eq!(raw_claims["amr"], serde_json::json!(["pwd"]));
    assert!(raw_claims["acr"].is_string());

    let info: CoreUserInfoClaims = rp
        .user_info(
            tokens.access_token().clone(),
            Some(claims.subject().clone()),
        )
        .unwrap()
        .request_async(&http)
        .await
        .expect("userinfo");
    assert_eq!(info.email().unwrap().as_str(), "ada@example.org");

    // Refresh rotates; the old refresh token is then dead, and reusing it kills the family.
    let first_refresh = tokens.refresh_token().expect("a refresh token").clone();
    let refreshed = rp
        .exchange_refresh_token(&first_refresh)
        .unwrap()
        .request_async(&http)
        .await
        .expect("refresh");
    let second_refresh = refreshed
        .refresh_token()
        .expect("a rotated refresh token")
        .clone();
    assert_ne!(second_refresh.secret(), first_refresh.secret());
    refreshed
        .id_token()
        .unwrap()
        .claims(&verifier, |_: Option<&Nonce>| Ok(()))
        .expect("a valid refreshed ID token");
    let reuse = rp
        .exchange_refresh_token(&first_refresh)
        .unwrap()
        .request_async(&http)
        .await;
    assert!(format!("{reuse:?}").contains("invalid_grant"), "{reuse:?}");
    let after = rp
        .exchange_refresh_token(&second_refresh)
        .unwrap()
        .request_async(&http)
        .await;
    assert!(
        format!("{after:?}").contains("invalid_grant"),
        "the family was revoked: {after:?}"
    );

    // Single sign-on: a second app gets a code from the same session without a password.
    let (id2, secret2) = register_client(&server.store, registration("Notes", alg)).await;
    let rp2 = relying_party(&server, &id2, secret2.as_deref()).await;
    let s2 = start(&rp2, &[("prompt", "none")]);
    let back = browser
        .authorize(&s2.url, None, None)
        .await
        .expect("no login form");
    let code2 = code_from(&back, &s2.csrf, &server.base);
    let t2 = rp2
        .exchange_code(AuthorizationCode::new(code2))
        .unwrap()
        .set_pkce_verifier(s2.verifier)
        .request_async(&http)
        .await
        .unwrap();
    let c2 = t2
        .id_token()
        .unwrap()
        .claims(
            &rp2.id_token_verifier().set_allowed_algs(vec![alg_of(alg)]),
            &s2.nonce,
        )
        .unwrap();
    assert_eq!(c2.subject(), claims.subject());
    // The session remembers both apps, for the logout that will have to reach them.
    let sid = raw_claims["sid"].as_str().unwrap();
    let apps: Vec<String> = server
        .store
        .session_clients(sid)
        .await
        .unwrap()
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(apps.len(), 2);
    assert!(apps.contains(&id) && apps.contains(&id2), "{apps:?}");

    // After sign-out, prompt=none says login_required.
    let csrf = browser.get("/account").await.csrf();
    browser.post("/logout", &[("csrf", &csrf)]).await;
    let s3 = start(&rp2, &[("prompt", "none")]);
    let back = browser.authorize(&s3.url, None, None).await.unwrap();
    assert_eq!(error_from(&back), "login_required");
    // And the access token issued under the ended session is no longer accepted.
    let info: Result<CoreUserInfoClaims, _> = rp2
        .user_info(t2.access_token().clone(), None)
        .unwrap()
        .request_async(&http)
        .await;
    assert!(info.is_err(), "userinfo after sign-out: {info:?}");
}

#[tokio::test]
async fn code_flow_with_rs256() {
    full_flow(IdTokenAlg::RS256).await;
}

#[tokio::test]
async fn code_flow_with_es256() {
    full_flow(IdTokenAlg::ES256).await;
}

#[tokio::test]
async fn code_flow_with_eddsa() {
    full_flow(IdTokenAlg::EdDSA).await;
}

#[tokio::test]
async fn dynamic_registration_needs_the_token_and_registers_a_working_client() {
    let db = TestDb::new().await;
    let off = TestServer::start_on_localhost(&db).await;
    let r = reqwest::Client::new()
        .post(format!("{}/register", off.base))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "off unless configured");
    drop(off);

    let iat = "an-initial-access-token-of-enough-length-0123456789";
    let db = TestDb::new().await;
    let server = TestServer::start_on_localhost_with(&db, |c| {
        c.registration.initial_access_token = Some(lanyard_server::config::Redacted(iat.into()));
    })
    .await;
    server.add_user("ada", PW).await;
    let register = |token: Option<&'static str>, body: serde_json::Value| {
        let url = format!("{}/register", server.base);
        async move {
            let mut req = reqwest::Client::new().post(url).json(&body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let good = serde_json::json!({"client_name": "Dynamic", "redirect_uris": [REDIRECT], "id_token_signed_response_alg": "ES256"});
    assert_eq!(register(None, good.clone()).await.0, 401);
    assert_eq!(
        register(Some("wrong-token-wrong-token-wrong-token-xx"), good.clone())
            .await
            .0,
        401
    );
    let (status, body) = register(
        Some(iat),
        serde_json::json!({"redirect_uris": ["http://evil.example/cb"]}),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_redirect_uri"))
    );
    let (status, body) = register(
        Some(iat),
        serde_json::json!({"redirect_uris": [REDIRECT], "response_types": ["token"]}),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_client_metadata"))
    );
    let (status, body) = register(
        Some(iat),
        serde_json::json!({"redirect_uris": "not a list"}),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_client_metadata"))
    );

    let logout_app = serde_json::json!({
        "redirect_uris": [REDIRECT],
        "backchannel_logout_uri": "http://localhost:9999/bc",
        "backchannel_logout_session_required": false,
        "frontchannel_logout_uri": "http://localhost:9999/fc",
    });
    let (status, body) = register(Some(iat), logout_app).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (
            &body["backchannel_logout_uri"],
            &body["backchannel_logout_session_required"],
            &body["frontchannel_logout_session_required"],
        ),
        (
            &"http://localhost:9999/bc".into(),
            &true.into(),
            &true.into()
        ),
        "sid is always sent, so the registered value says so"
    );

    let (status, body) = register(Some(iat), good).await;
    assert_eq!(status, 201, "{body}");
    let id = body["client_id"].as_str().unwrap().to_owned();
    let secret = body["client_secret"].as_str().unwrap().to_owned();
    let meta: serde_json::Value =
        reqwest::get(format!("{}/.well-known/openid-configuration", server.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(
        meta["registration_endpoint"],
        format!("{}/register", server.base)
    );

    // The registered client works with a stock relying party, after the user consents.
    let rp = relying_party(&server, &id, Some(&secret)).await;
    let mut browser = Browser::new(&server);
    let s = start(&rp, &[]);
    let back = browser
        .authorize(&s.url, Some(("ada", PW)), Some(true))
        .await
        .unwrap();
    let code = code_from(&back, &s.csrf, &server.base);
    let tokens = rp
        .exchange_code(AuthorizationCode::new(code))
        .unwrap()
        .set_pkce_verifier(s.verifier)
        .request_async(&http())
        .await
        .unwrap();
    let verifier = rp
        .id_token_verifier()
        .set_allowed_algs(vec![CoreJwsSigningAlgorithm::EcdsaP256Sha256]);
    tokens
        .id_token()
        .unwrap()
        .claims(&verifier, &s.nonce)
        .expect("a valid ES256 ID token");
}
