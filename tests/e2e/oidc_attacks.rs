//! The authorization server under attack: every bad request gets the spec's error, never a
//! 500, a code, or a redirect to an address the client did not register.

use std::collections::HashMap;

use lanyard_core::Clock;
use lanyard_core::client::{ClientRegistration, GrantType};
use openidconnect::PkceCodeChallenge;
use serde_json::Value;

use crate::harness::{Browser, TestDb, TestServer, register_client};

const PW: &str = "correct horse battery";
const REDIRECT: &str = "http://localhost:9999/callback";

struct Setup {
    _db: TestDb,
    server: TestServer,
    id: String,
    secret: String,
    browser: Browser,
}

async fn setup(skip_consent: bool) -> Setup {
    setup_with(skip_consent, |_| {}).await
}

async fn setup_with(
    skip_consent: bool,
    configure: impl FnOnce(&mut lanyard_server::Config),
) -> Setup {
    let db = TestDb::new().await;
    let server = TestServer::start_on_localhost_with(&db, configure).await;
    server.add_user("ada", PW).await;
    let reg = ClientRegistration {
        name: "Wiki".into(),
        redirect_uris: vec![REDIRECT.into()],
        skip_consent,
        grant_types: vec![
            GrantType::AuthorizationCode,
            GrantType::RefreshToken,
            GrantType::ClientCredentials,
        ],
        ..Default::default()
    };
    let (id, secret) = register_client(&server.store, reg).await;
    let mut browser = Browser::new(&server);
    assert_eq!(browser.sign_in("ada", PW).await.status, 303);
    Setup {
        _db: db,
        server,
        id,
        secret: secret.unwrap(),
        browser,
    }
}

type Params = Vec<(&'static str, String)>;

fn authorize_url(s: &Setup, params: &Params) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        q.append_pair(k, v);
    }
    format!("{}/authorize?{}", s.server.base, q.finish())
}

fn good_params(s: &Setup, challenge: &str) -> Params {
    vec![
        ("response_type", "code".into()),
        ("client_id", s.id.clone()),
        ("redirect_uri", REDIRECT.into()),
        ("scope", "openid email offline_access".into()),
        ("state", "xyz".into()),
        ("nonce", "n-0S6".into()),
        ("code_challenge", challenge.into()),
        ("code_challenge_method", "S256".into()),
    ]
}

fn with(mut params: Params, key: &'static str, value: Option<&str>) -> Params {
    params.retain(|(k, _)| *k != key);
    if let Some(v) = value {
        params.push((key, v.to_owned()));
    }
    params
}

fn query(url: &url::Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

/// Runs an authorization request in the signed-in browser; returns the redirect's query.
async fn authorize(s: &mut Setup, params: &Params) -> HashMap<String, String> {
    let url = authorize_url(s, params);
    let back = s
        .browser
        .authorize(&url, None, Some(true))
        .await
        .expect("a redirect to the client");
    assert!(back.as_str().starts_with(REDIRECT), "{back}");
    let q = query(&back);
    assert_eq!(
        q.get("iss").map(String::as_str),
        Some(s.server.base.as_str())
    );
    q
}

async fn token(s: &Setup, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/token", s.server.base))
        .form(form);
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body = r.text().await.unwrap();
    assert_ne!(status, 500, "{body}");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn exchange(s: &Setup, code: &str, verifier: &str) -> (u16, Value) {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier),
    ];
    token(s, &form, Some((&s.id, &s.secret))).await
}

/// Re-reads the signing keys now, as the server does every minute.
async fn reload_keys(s: &Setup) {
    s.server
        .state
        .keys
        .reload(&*s.server.store, s.server.clock.now())
        .await
        .unwrap();
}

async fn introspect(s: &Setup, token: &str) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}/introspect", s.server.base))
        .basic_auth(&s.id, Some(&s.secret))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn unregistered_and_look_alike_redirect_uris_get_a_page_not_a_redirect() {
    let mut s = setup(true).await;
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    for evil in [
        "http://evil.example/callback",
        "http://localhost:9999/callback/../evil",
        "http://localhost:9999/callbackx",
        "http://localhost:9999/callback?next=http://evil.example",
        "http://localhost:9999/callback#",
        "http://LOCALHOST:9999/callback",
        "http://localhost:9999/callback/",
    ] {
        let params = with(
            good_params(&s, challenge.as_str()),
            "redirect_uri",
            Some(evil),
        );
        let page = s.browser.open(&authorize_url(&s, &params)).await;
        assert_eq!(page.status, 400, "{evil}");
        assert!(page.location().is_none(), "{evil}");
    }
    for (key, value) in [
        ("client_id", Some("unknown")),
        ("client_id", None),
        ("redirect_uri", None),
    ] {
        let params = with(good_params(&s, challenge.as_str()), key, value);
        let page = s.browser.open(&authorize_url(&s, &params)).await;
        assert_eq!(page.status, 400, "{key}={value:?}");
    }
    let mut dup = good_params(&s, challenge.as_str());
    dup.push(("state", "second".into()));
    assert_eq!(
        s.browser.open(&authorize_url(&s, &dup)).await.status,
        400,
        "repeated parameters"
    );
}

#[tokio::test]
async fn bad_authorization_requests_get_the_specs_error_at_the_client() {
    let mut s = setup(true).await;
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let c = challenge.as_str().to_owned();
    let cases: Vec<(Params, &str)> = vec![
        (
            with(good_params(&s, &c), "response_type", Some("token")),
            "unsupported_response_type",
        ),
        (
            with(good_params(&s, &c), "response_type", Some("code id_token")),
            "unsupported_response_type",
        ),
        (
            with(good_params(&s, &c), "response_type", None),
            "invalid_request",
        ),
        (
            with(good_params(&s, &c), "scope", Some("email")),
            "invalid_scope",
        ),
        (
            with(good_params(&s, &c), "code_challenge", None),
            "invalid_request",
        ),
        (
            with(good_params(&s, &c), "code_challenge_method", Some("plain")),
            "invalid_request",
        ),
        (
            with(good_params(&s, &c), "code_challenge_method", None),
            "invalid_request",
        ),
        (
            with(good_params(&s, &c), "code_challenge", Some("short")),
            "invalid_request",
        ),
        (
            with(good_params(&s, &c), "prompt", Some("none login")),
            "invalid_request",
        ),
        (
            with(good_params(&s, &c), "max_age", Some("soon")),
            "invalid_request",
        ),
        (
            with(
                good_params(&s, &c),
                "request",
                Some("eyJhbGciOiJub25lIn0.e30."),
            ),
            "request_not_supported",
        ),
        (
            with(good_params(&s, &c), "response_mode", Some("fragment")),
            "invalid_request",
        ),
    ];
    for (params, expected) in cases {
        let q = authorize(&mut s, &params).await;
        assert_eq!(
            q.get("error").map(String::as_str),
            Some(expected),
            "{params:?}"
        );
        assert_eq!(q.get("state").map(String::as_str), Some("xyz"));
        assert!(!q.contains_key("code"));
    }
}

#[tokio::test]
async fn codes_are_single_use_bound_to_client_redirect_and_verifier_and_short_lived() {
    let mut s = setup(true).await;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let p = good_params(&s, challenge.as_str());
    let code = authorize(&mut s, &p).await["code"].clone();

    assert_eq!(
        exchange(&s, &code, "x".repeat(43).as_str()).await.1["error"],
        "invalid_grant",
        "wrong verifier"
    );
    // The failed attempt consumed the code: the right verifier is now too late.
    assert_eq!(
        exchange(&s, &code, verifier.secret()).await.1["error"],
        "invalid_grant"
    );

    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let p = good_params(&s, challenge.as_str());
    let code = authorize(&mut s, &p).await["code"].clone();
    let (status, first) = exchange(&s, &code, verifier.secret()).await;
    assert_eq!(status, 200, "{first}");
    let access = first["access_token"].as_str().unwrap().to_owned();
    let refresh = first["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(introspect(&s, &access).await["active"], true);
    assert_eq!(introspect(&s, &refresh).await["active"], true);
    let (status, replay) = exchange(&s, &code, verifier.secret()).await;
    assert_eq!(
        (status, replay["error"].as_str()),
        (400, Some("invalid_grant")),
        "replayed code"
    );
    assert_eq!(
        introspect(&s, &access).await["active"],
        false,
        "a replay revokes the access token"
    );
    assert_eq!(
        introspect(&s, &refresh).await["active"],
        false,
        "and the refresh token"
    );

    // Another client cannot use the code.
    let other = ClientRegistration {
        name: "Other".into(),
        redirect_uris: vec![REDIRECT.into()],
        skip_consent: true,
        ..Default::default()
    };
    let (other_id, other_secret) = register_client(&s.server.store, other).await;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let p = good_params(&s, challenge.as_str());
    let code = authorize(&mut s, &p).await["code"].clone();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.secret()),
    ];
    let (_, body) = token(
        &s,
        &form,
        Some((&other_id, other_secret.as_deref().unwrap())),
    )
    .await;
    assert_eq!(body["error"], "invalid_grant");

    // A different redirect_uri at the token endpoint.
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let p = good_params(&s, challenge.as_str());
    let code = authorize(&mut s, &p).await["code"].clone();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", "http://localhost:9999/other"),
        ("code_verifier", verifier.secret()),
    ];
    assert_eq!(
        token(&s, &form, Some((&s.id, &s.secret))).await.1["error"],
        "invalid_grant"
    );

    // Codes live 60 seconds.
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let p = good_params(&s, challenge.as_str());
    let code = authorize(&mut s, &p).await["code"].clone();
    s.server.advance(61);
    assert_eq!(
        exchange(&s, &code, verifier.secret()).await.1["error"],
        "invalid_grant",
        "expired code"
    );

    // A missing verifier when a challenge was sent.
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let p = good_params(&s, challenge.as_str());
    let code = authorize(&mut s, &p).await["code"].clone();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", REDIRECT),
    ];
    assert_eq!(
        token(&s, &form, Some((&s.id, &s.secret))).await.1["error"],
        "invalid_grant"
    );
}

#[tokio::test]
async fn the_token_endpoint_authenticates_clients_and_rejects_malformed_requests() {
    let s = setup(true).await;
    let form = [("grant_type", "client_credentials")];
    let (status, body) = token(&s, &form, Some((&s.id, "wrong secret"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, body) = token(&s, &form, Some(("nobody", "x"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, body) = token(
        &s,
        &[("grant_type", "client_credentials"), ("client_id", &s.id)],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "a confidential client without its secret"
    );
    let both = [
        ("grant_type", "client_credentials"),
        ("client_secret", s.secret.as_str()),
    ];
    assert_eq!(
        token(&s, &both, Some((&s.id, &s.secret))).await.1["error"],
        "invalid_request",
        "two methods at once"
    );

    let (status, body) = token(&s, &form, Some((&s.id, &s.secret))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body.get("id_token").is_none() && body.get("refresh_token").is_none());
    let post = [
        ("grant_type", "client_credentials"),
        ("client_id", s.id.as_str()),
        ("client_secret", s.secret.as_str()),
    ];
    assert_eq!(token(&s, &post, None).await.0, 200, "client_secret_post");
    let c = introspect(&s, body["access_token"].as_str().unwrap()).await;
    assert_eq!(c["active"], true);
    assert_eq!(c["sub"], s.id.as_str());

    for (form, expected) in [
        (vec![("code", "x")], "invalid_request"),
        (
            vec![
                ("grant_type", "password"),
                ("username", "ada"),
                ("password", PW),
            ],
            "unsupported_grant_type",
        ),
        (vec![("grant_type", "implicit")], "unsupported_grant_type"),
        (
            vec![("grant_type", "authorization_code")],
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "authorization_code"),
                ("code", "nonsense"),
                ("redirect_uri", REDIRECT),
            ],
            "invalid_grant",
        ),
        (
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", "nonsense"),
            ],
            "invalid_grant",
        ),
        (vec![("grant_type", "refresh_token")], "invalid_request"),
        (
            vec![("grant_type", "client_credentials"), ("scope", "openid")],
            "invalid_scope",
        ),
        (
            vec![
                ("grant_type", "client_credentials"),
                ("grant_type", "client_credentials"),
            ],
            "invalid_request",
        ),
    ] {
        let (status, body) = token(&s, &form, Some((&s.id, &s.secret))).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(expected)),
            "{form:?}"
        );
    }
    let r = reqwest::Client::new()
        .post(format!("{}/token", s.server.base))
        .basic_auth(&s.id, Some(&s.secret))
        .body(vec![0xff, 0xfe, b'=', b'&'])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "garbage is a 400, not a 500");
}

#[tokio::test]
async fn prompt_none_without_a_session_and_forced_reauthentication() {
    let mut s = setup(true).await;
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let c = challenge.as_str().to_owned();
    let mut stranger = Browser::new(&s.server);
    let url = authorize_url(&s, &with(good_params(&s, &c), "prompt", Some("none")));
    let back = stranger.authorize(&url, None, None).await.unwrap();
    assert_eq!(query(&back)["error"], "login_required");

    // Signed in already: prompt=login and max_age=0 still show the password form.
    for (k, v) in [("prompt", "login"), ("max_age", "0")] {
        // max_age counts whole seconds since the last sign-in.
        s.server.advance(1);
        let url = authorize_url(&s, &with(good_params(&s, &c), k, Some(v)));
        let page = s
            .browser
            .authorize(&url, None, None)
            .await
            .expect_err("the login form");
        assert!(page.body.contains("action=\"/login\""), "{k}={v}");
        s.server.advance(2);
        let back = s
            .browser
            .authorize(&url, Some(("ada", PW)), None)
            .await
            .unwrap();
        assert!(query(&back).contains_key("code"), "{k}={v}: {back}");
    }
    // A recent enough sign-in satisfies max_age without a form.
    let url = authorize_url(&s, &with(good_params(&s, &c), "max_age", Some("3600")));
    assert!(query(&s.browser.authorize(&url, None, None).await.unwrap()).contains_key("code"));
}

#[tokio::test]
async fn consent_is_asked_remembered_and_can_be_refused() {
    let mut s = setup(false).await;
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let c = challenge.as_str().to_owned();
    let url = authorize_url(&s, &good_params(&s, &c));

    let none = authorize_url(&s, &with(good_params(&s, &c), "prompt", Some("none")));
    assert_eq!(
        query(&s.browser.authorize(&none, None, None).await.unwrap())["error"],
        "consent_required"
    );

    let page = s
        .browser
        .authorize(&url, None, None)
        .await
        .expect_err("the consent page");
    assert!(
        page.body.contains("Allow Wiki?")
            && page.body.contains(">Allow</button>")
            && page.body.contains(">Deny</button>")
    );
    assert!(page.body.contains("see your email address"));
    let back = s.browser.authorize(&url, None, Some(false)).await.unwrap();
    assert_eq!(query(&back)["error"], "access_denied");

    let back = s.browser.authorize(&url, None, Some(true)).await.unwrap();
    assert!(query(&back).contains_key("code"));
    // Remembered: no page the second time, unless asked for.
    assert!(query(&s.browser.authorize(&url, None, None).await.unwrap()).contains_key("code"));
    let again = authorize_url(&s, &with(good_params(&s, &c), "prompt", Some("consent")));
    assert!(
        s.browser.authorize(&again, None, None).await.is_err(),
        "prompt=consent asks again"
    );

    // The consent form is CSRF-protected.
    let page = s.browser.open(&again).await;
    let mut form = crate::harness::hidden_fields(&page.body);
    form.retain(|(k, _)| k != "csrf");
    form.push(("csrf".into(), "forged".into()));
    form.push(("decision".into(), "allow".into()));
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(s.browser.post("/consent", &pairs).await.status, 403);
}

#[tokio::test]
async fn tokens_die_with_their_session_and_revocation_works() {
    let mut s = setup(true).await;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let params = with(
        good_params(&s, challenge.as_str()),
        "scope",
        Some("openid email"),
    );
    let code = authorize(&mut s, &params).await["code"].clone();
    let (_, t) = exchange(&s, &code, verifier.secret()).await;
    let access = t["access_token"].as_str().unwrap().to_owned();
    let refresh = t["refresh_token"].as_str().unwrap().to_owned();

    let userinfo = |token: String| {
        let base = s.server.base.clone();
        async move {
            reqwest::Client::new()
                .get(format!("{base}/userinfo"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(userinfo(access.clone()).await.status(), 200);
    let mut tampered = access.clone();
    tampered.pop();
    tampered.push(if access.ends_with('A') { 'B' } else { 'A' });
    let r = userinfo(tampered).await;
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    let unsigned = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0.{}.",
        access.split('.').nth(1).unwrap()
    );
    assert_eq!(userinfo(unsigned).await.status(), 401, "alg none");
    assert_eq!(
        reqwest::Client::new()
            .get(format!("{}/userinfo", s.server.base))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // Revoking the access token (RFC 7009).
    let r = reqwest::Client::new()
        .post(format!("{}/revoke", s.server.base))
        .basic_auth(&s.id, Some(&s.secret))
        .form(&[("token", access.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(userinfo(access.clone()).await.status(), 401);
    assert_eq!(introspect(&s, &access).await["active"], false);

    // Signing out ends the session's refresh tokens (not offline_access).
    assert_eq!(introspect(&s, &refresh).await["active"], true);
    let csrf = s.browser.get("/account").await.csrf();
    s.browser.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(introspect(&s, &refresh).await["active"], false);
    let (_, body) = token(
        &s,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        Some((&s.id, &s.secret)),
    )
    .await;
    assert_eq!(body["error"], "invalid_grant");

    // Unauthenticated introspection is refused.
    let r = reqwest::Client::new()
        .post(format!("{}/introspect", s.server.base))
        .form(&[("token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn discovery_and_jwks_tell_the_truth() {
    let s = setup(true).await;
    let meta: Value = reqwest::get(format!(
        "{}/.well-known/openid-configuration",
        s.server.base
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(meta["issuer"], s.server.base.as_str());
    assert_eq!(
        meta["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        meta["response_types_supported"],
        serde_json::json!(["code"])
    );
    assert_eq!(meta["request_uri_parameter_supported"], false);
    assert_eq!(meta["authorization_response_iss_parameter_supported"], true);
    for endpoint in [
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "jwks_uri",
        "introspection_endpoint",
        "revocation_endpoint",
    ] {
        let url = meta[endpoint].as_str().unwrap();
        assert!(url.starts_with(&s.server.base), "{endpoint}");
        let r = reqwest::Client::new().get(url).send().await.unwrap();
        assert_ne!(r.status(), 404, "{endpoint} exists");
    }
    let jwks: Value = reqwest::get(format!("{}/jwks.json", s.server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    let algs: Vec<&str> = keys.iter().map(|k| k["alg"].as_str().unwrap()).collect();
    for alg in ["RS256", "ES256", "EdDSA"] {
        assert!(algs.contains(&alg), "{algs:?}");
    }
    assert!(
        keys.iter()
            .all(|k| k.get("d").is_none() && k.get("p").is_none()),
        "no private parts"
    );
}

#[tokio::test]
async fn id_token_hints_are_checked_and_name_the_expected_user() {
    let mut s = setup(true).await;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let p = good_params(&s, challenge.as_str());
    let code = authorize(&mut s, &p).await["code"].clone();
    let (_, t) = exchange(&s, &code, verifier.secret()).await;
    let id_token = t["id_token"].as_str().unwrap().to_owned();

    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let c = challenge.as_str().to_owned();
    let hinted = with(
        with(good_params(&s, &c), "prompt", Some("none")),
        "id_token_hint",
        Some(&id_token),
    );
    assert!(
        authorize(&mut s, &hinted).await.contains_key("code"),
        "the hinted user is signed in"
    );

    let mut forged = id_token.clone();
    forged.pop();
    for bad in [
        forged.as_str(),
        "not.a.jwt",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
    ] {
        let params = with(good_params(&s, &c), "id_token_hint", Some(bad));
        assert_eq!(
            authorize(&mut s, &params).await["error"],
            "invalid_request",
            "{bad}"
        );
    }

    // Signed in as someone else: prompt=none cannot answer for the hinted user.
    s.server.add_user("bob", PW).await;
    let csrf = s.browser.get("/account").await.csrf();
    s.browser.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(s.browser.sign_in("bob", PW).await.status, 303);
    assert_eq!(authorize(&mut s, &hinted).await["error"], "login_required");
}

#[tokio::test]
async fn rotated_keys_are_published_at_once_and_sign_after_propagation() {
    use crate::harness::{lanyard, run, stderr};
    let s = setup(true).await;
    let jwks = || async {
        let v: Value = reqwest::get(format!("{}/jwks.json", s.server.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let kid_of = |token: &str| {
        use base64::Engine as _;
        let h = token.split('.').next().unwrap();
        let h: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h)
                .unwrap(),
        )
        .unwrap();
        h["kid"].as_str().unwrap().to_owned()
    };
    let issue = || async {
        let (_, t) = token(
            &s,
            &[("grant_type", "client_credentials")],
            Some((&s.id, &s.secret)),
        )
        .await;
        t["access_token"].as_str().unwrap().to_owned()
    };
    let before = jwks().await;
    assert_eq!(before.len(), 3);
    let old_token = issue().await;
    let old_kid = kid_of(&old_token);

    let out = run(
        lanyard(&s._db).args(["keys", "rotate", "--alg", "RS256"]),
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    reload_keys(&s).await;
    let after = jwks().await;
    assert_eq!(
        after.len(),
        4,
        "the new key is published at once, the old one kept"
    );
    assert!(after.contains(&old_kid));
    assert_eq!(
        kid_of(&issue().await),
        old_kid,
        "the old key signs until the new one has propagated"
    );

    // The CLI stamped the new key with the wall clock; move the server's clock past its start.
    let keys = s.server.store.signing_keys().await.unwrap();
    let newest = keys.iter().map(|k| k.activates_at).max().unwrap();
    assert!(
        newest.as_secs()
            >= s.server.clock.now().as_secs() + lanyard_server::keys::PROPAGATION.as_secs() as i64
                - 1
    );
    s.server
        .clock
        .set(newest.saturating_add(std::time::Duration::from_secs(1)));
    reload_keys(&s).await;
    let new_token = issue().await;
    assert_ne!(kid_of(&new_token), old_kid, "the new key signs now");
    assert_eq!(introspect(&s, &new_token).await["active"], true);
    assert_eq!(
        introspect(&s, &old_token).await["active"],
        true,
        "the old key still verifies its tokens"
    );

    // Once its tokens have expired, the old key is dropped.
    s.server.advance(3 * 3600);
    reload_keys(&s).await;
    let later = jwks().await;
    assert!(!later.contains(&old_kid), "{later:?}");
    assert_eq!(later.len(), 3);
}

#[tokio::test]
async fn a_remembered_signature_is_forgotten_when_its_key_leaves() {
    use crate::harness::query_strings;
    let s = setup(true).await;
    let (_, t) = token(
        &s,
        &[("grant_type", "client_credentials")],
        Some((&s.id, &s.secret)),
    )
    .await;
    let access = t["access_token"].as_str().unwrap().to_owned();
    // The second introspection finds the signature already checked.
    for _ in 0..2 {
        assert_eq!(introspect(&s, &access).await["active"], true);
    }
    // A tampered token is not mistaken for the remembered one.
    let mut tampered = access.clone();
    tampered.pop();
    tampered.push(if access.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(introspect(&s, &tampered).await["active"], false);

    // Every key of the token's algorithm disappears (as if removed by hand); the token has
    // not expired, but nothing can vouch for its signature any more.
    let gone = query_strings(
        &s._db,
        "DELETE FROM signing_keys WHERE alg = 'ES256' OR alg = 'RS256' OR alg = 'EdDSA' \
         RETURNING kid",
    )
    .await;
    assert_eq!(gone.len(), 3);
    reload_keys(&s).await;
    assert_eq!(introspect(&s, &access).await["active"], false);
}

#[tokio::test]
async fn public_clients_use_pkce_without_a_secret_and_post_works_everywhere() {
    let mut s = setup(true).await;
    let public = ClientRegistration {
        name: "SPA".into(),
        redirect_uris: vec![REDIRECT.into()],
        public: true,
        skip_consent: true,
        ..Default::default()
    };
    let (spa, none) = register_client(&s.server.store, public).await;
    assert!(none.is_none());
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();

    // POST /authorize, as a form, is the same request as GET.
    let mut params = good_params(&s, challenge.as_str());
    params.retain(|(k, _)| *k != "client_id");
    params.push(("client_id", spa.clone()));
    let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = s.browser.post("/authorize", &pairs).await;
    assert_eq!(r.status, 303);
    let back = url::Url::parse(r.location().unwrap()).unwrap();
    let code = query(&back)["code"].clone();

    // `none` authentication: client_id in the body, no secret; the verifier proves possession.
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.secret().as_str()),
        ("client_id", spa.as_str()),
    ];
    let (status, t) = token(&s, &form, None).await;
    assert_eq!(status, 200, "{t}");
    let access = t["access_token"].as_str().unwrap().to_owned();

    // A secret for a public client is not a way in either.
    let (status, _) = token(
        &s,
        &[("grant_type", "client_credentials")],
        Some((&spa, "anything")),
    )
    .await;
    assert_eq!(status, 401);

    // POST /userinfo with the token in the body (RFC 6750 §2.2).
    let r = reqwest::Client::new()
        .post(format!("{}/userinfo", s.server.base))
        .form(&[("access_token", access.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["email"], "ada@example.org");

    // Another client learns nothing about this client's token (RFC 7662 §4).
    assert_eq!(introspect(&s, &access).await["active"], false);
    // Ending the session ends the token at once.
    let userinfo = |token: String| {
        let url = format!("{}/userinfo", s.server.base);
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(userinfo(access.clone()).await, 200);
    let csrf = s.browser.get("/account").await.csrf();
    s.browser.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(userinfo(access.clone()).await, 401);

    // login_hint fills in the username on the form.
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let hinted = with(
        good_params(&s, challenge.as_str()),
        "login_hint",
        Some("ada"),
    );
    let page = s
        .browser
        .authorize(&authorize_url(&s, &hinted), None, None)
        .await
        .expect_err("the login form");
    assert!(page.body.contains("value=\"ada\""), "the hint is prefilled");
}

#[tokio::test]
async fn keys_sealed_under_another_encryption_key_stop_start_up_with_a_clear_error() {
    let db = TestDb::new().await;
    let _first = TestServer::start(&db, |_| {}).await;
    let config = lanyard_server::Config {
        database_url: db.url.clone(),
        keys: lanyard_server::config::KeysConfig {
            encryption_key: Some(lanyard_server::config::Redacted("A".repeat(43))),
            encryption_key_file: None,
        },
        ..Default::default()
    };
    let store = db.store().await;
    let clock = std::sync::Arc::new(lanyard_core::SystemClock);
    let err = lanyard_server::AppState::new(store, clock, config)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("wrong encryption key"), "{err}");
}

async fn refresh(s: &Setup, token: &str, scope: Option<&str>) -> (u16, Value) {
    let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", token)];
    if let Some(sc) = scope {
        form.push(("scope", sc));
    }
    token_form(s, &form).await
}

async fn token_form(s: &Setup, form: &[(&str, &str)]) -> (u16, Value) {
    token(s, form, Some((&s.id, &s.secret))).await
}

async fn signed_in_tokens(s: &mut Setup, scope: &str) -> Value {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let p = with(good_params(s, challenge.as_str()), "scope", Some(scope));
    let code = authorize(s, &p).await["code"].clone();
    let (status, t) = exchange(s, &code, verifier.secret()).await;
    assert_eq!(status, 200, "{t}");
    t
}

async fn userinfo_status(s: &Setup, access: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/userinfo", s.server.base))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn offline_access_outlives_the_session_and_narrowing_keeps_the_grant() {
    let mut s = setup(true).await;
    let t = signed_in_tokens(&mut s, "openid email offline_access").await;
    let csrf = s.browser.get("/account").await.csrf();
    s.browser.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(
        userinfo_status(&s, t["access_token"].as_str().unwrap()).await,
        401,
        "the session's access token ended"
    );
    assert_eq!(
        introspect(&s, t["access_token"].as_str().unwrap()).await["active"],
        false,
        "and introspection says so"
    );

    let (status, r1) = refresh(&s, t["refresh_token"].as_str().unwrap(), Some("openid")).await;
    assert_eq!(status, 200, "offline_access refreshes after sign-out: {r1}");
    assert_eq!(
        userinfo_status(&s, r1["access_token"].as_str().unwrap()).await,
        200,
        "and its new access token works"
    );
    assert_eq!(r1["scope"], "openid", "narrowed for this response");
    let (status, r2) = refresh(&s, r1["refresh_token"].as_str().unwrap(), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        r2["scope"], "openid email offline_access",
        "the grant itself was not narrowed"
    );
    let (_, r3) = refresh(&s, r2["refresh_token"].as_str().unwrap(), Some("bogus")).await;
    assert_eq!(r3["error"], "invalid_scope");
}

#[tokio::test]
async fn a_password_change_ends_offline_access_too() {
    let mut s = setup(true).await;
    let t = signed_in_tokens(&mut s, "openid email offline_access").await;
    let (_, r1) = refresh(&s, t["refresh_token"].as_str().unwrap(), None).await;
    let access = r1["access_token"].as_str().unwrap().to_owned();
    let changed = s
        .browser
        .change_password(PW, "a brand new passphrase")
        .await;
    assert_eq!(changed.status, 200, "{}", changed.body);

    let refresh_token = r1["refresh_token"].as_str().unwrap();
    assert_eq!(introspect(&s, refresh_token).await["active"], false);
    assert_eq!(introspect(&s, &access).await["active"], false);
    assert_eq!(userinfo_status(&s, &access).await, 401);
    let (status, r2) = refresh(&s, refresh_token, None).await;
    assert_eq!((status, r2["error"].as_str()), (400, Some("invalid_grant")));
}

#[tokio::test]
async fn offline_access_can_be_set_to_end_with_the_session() {
    let mut s = setup_with(true, |c| {
        c.tokens.offline_access = lanyard_server::config::OfflineAccess::EndWithSession;
    })
    .await;
    let t = signed_in_tokens(&mut s, "openid email offline_access").await;
    let refresh_token = t["refresh_token"].as_str().unwrap();
    assert_eq!(introspect(&s, refresh_token).await["active"], true);
    let csrf = s.browser.get("/account").await.csrf();
    s.browser.post("/logout", &[("csrf", &csrf)]).await;

    assert_eq!(introspect(&s, refresh_token).await["active"], false);
    let (status, r) = refresh(&s, refresh_token, None).await;
    assert_eq!((status, r["error"].as_str()), (400, Some("invalid_grant")));
}

#[tokio::test]
async fn signing_in_again_keeps_the_other_apps_tokens_alive() {
    let mut s = setup(true).await;
    let t = signed_in_tokens(&mut s, "openid email").await;
    let access = t["access_token"].as_str().unwrap().to_owned();
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let relogin = authorize_url(
        &s,
        &with(good_params(&s, challenge.as_str()), "prompt", Some("login")),
    );
    s.server.advance(5);
    let back = s
        .browser
        .authorize(&relogin, Some(("ada", PW)), None)
        .await
        .unwrap();
    assert!(query(&back).contains_key("code"));
    assert_eq!(
        userinfo_status(&s, &access).await,
        200,
        "the same session (sid), renewed"
    );
    let (status, _) = refresh(&s, t["refresh_token"].as_str().unwrap(), None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn revoking_or_reusing_a_refresh_token_ends_its_access_tokens_even_in_a_race() {
    let mut s = setup(true).await;
    let t = signed_in_tokens(&mut s, "openid").await;
    let refresh_token = t["refresh_token"].as_str().unwrap().to_owned();
    let access = t["access_token"].as_str().unwrap().to_owned();
    let r = reqwest::Client::new()
        .post(format!("{}/revoke", s.server.base))
        .basic_auth(&s.id, Some(&s.secret))
        .form(&[("token", refresh_token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        userinfo_status(&s, &access).await,
        401,
        "the family's access token is revoked too"
    );

    // Two uses of one refresh token at once: whoever wins, the family ends up revoked.
    let t = signed_in_tokens(&mut s, "openid").await;
    let rt = t["refresh_token"].as_str().unwrap();
    let (a, b) = tokio::join!(refresh(&s, rt, None), refresh(&s, rt, None));
    let winners: Vec<&Value> = [&a, &b]
        .into_iter()
        .filter(|(st, _)| *st == 200)
        .map(|(_, v)| v)
        .collect();
    assert!(winners.len() <= 1, "{a:?} {b:?}");
    for w in winners {
        assert_eq!(
            userinfo_status(&s, w["access_token"].as_str().unwrap()).await,
            401
        );
        let (status, _) = refresh(&s, w["refresh_token"].as_str().unwrap(), None).await;
        assert_eq!(status, 400, "the winner's new refresh token is dead too");
    }

    // Two exchanges of one code at once: the winner's tokens are revoked by the replay.
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let p = good_params(&s, challenge.as_str());
    let code = authorize(&mut s, &p).await["code"].clone();
    let (a, b) = tokio::join!(
        exchange(&s, &code, verifier.secret()),
        exchange(&s, &code, verifier.secret())
    );
    let winners: Vec<&Value> = [&a, &b]
        .into_iter()
        .filter(|(st, _)| *st == 200)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(winners.len(), 1, "{a:?} {b:?}");
    assert_eq!(
        userinfo_status(&s, winners[0]["access_token"].as_str().unwrap()).await,
        401
    );
}

#[tokio::test]
async fn control_characters_and_public_client_consent() {
    let mut s = setup(true).await;
    let page = s
        .browser
        .open(&format!(
            "{}/authorize?client_id=%00&redirect_uri=x",
            s.server.base
        ))
        .await;
    assert_eq!(page.status, 400);
    let (status, body) = token(
        &s,
        &[("grant_type", "client_credentials"), ("client_id", "\0")],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );

    // First-party apps skip consent unless the app asks for it.
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let ask = authorize_url(
        &s,
        &with(
            good_params(&s, challenge.as_str()),
            "prompt",
            Some("consent"),
        ),
    );
    assert!(
        s.browser.authorize(&ask, None, None).await.is_err(),
        "prompt=consent shows the page"
    );

    // A public client never gets silent, remembered consent.
    let spa = ClientRegistration {
        name: "SPA".into(),
        redirect_uris: vec![REDIRECT.into()],
        public: true,
        ..Default::default()
    };
    let (spa_id, _) = register_client(&s.server.store, spa).await;
    let mut p = good_params(&s, challenge.as_str());
    p.retain(|(k, _)| *k != "client_id");
    p.push(("client_id", spa_id));
    let url = authorize_url(&s, &p);
    assert!(
        query(&s.browser.authorize(&url, None, Some(true)).await.unwrap()).contains_key("code")
    );
    assert!(
        s.browser.authorize(&url, None, None).await.is_err(),
        "asked again"
    );
    let silent = authorize_url(&s, &with(p.clone(), "prompt", Some("none")));
    assert_eq!(
        query(&s.browser.authorize(&silent, None, None).await.unwrap())["error"],
        "consent_required"
    );

    // select_account shows the sign-in form, where another account can be chosen.
    let choose = authorize_url(
        &s,
        &with(
            good_params(&s, challenge.as_str()),
            "prompt",
            Some("select_account"),
        ),
    );
    let page = s
        .browser
        .authorize(&choose, None, None)
        .await
        .expect_err("the login form");
    assert!(page.body.contains("action=\"/login\""));
}

#[tokio::test]
async fn a_removed_client_gets_nothing_more() {
    let mut s = setup(true).await;
    let t = signed_in_tokens(&mut s, "openid offline_access").await;
    let (refresh_token, access) = (
        t["refresh_token"].as_str().unwrap().to_owned(),
        t["access_token"].as_str().unwrap().to_owned(),
    );
    let credentials = [("grant_type", "client_credentials")];
    let (status, _) = token(&s, &credentials, Some((&s.id, &s.secret))).await;
    assert_eq!(status, 200);
    assert_eq!(userinfo_status(&s, &access).await, 200);

    let removed = s
        .server
        .store
        .remove_client(
            &lanyard_core::client::ClientId::from_stored(s.id.clone()),
            &lanyard_core::audit::NewAuditEvent::new(
                s.server.clock.now(),
                lanyard_core::audit::AuditKind::ClientRemoved,
            ),
        )
        .await
        .unwrap();
    assert!(removed);
    // At once, even while client authentication may still remember the client: its grants went
    // with it, and its tokens no longer pass.
    let (status, body) = refresh(&s, &refresh_token, None).await;
    assert!(status == 400 || status == 401, "{status} {body}");
    assert_eq!(userinfo_status(&s, &access).await, 401);
    // A signed-in user sent by the removed app gets a page saying so, never a code.
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let url = authorize_url(&s, &good_params(&s, challenge.as_str()));
    let page = s.browser.open(&url).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("not registered"), "{}", page.body);
    // Within a second, client authentication forgets it too.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, body) = token(&s, &credentials, Some((&s.id, &s.secret))).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client");
}
