//! Back-channel logout: every way a session ends reaches the apps that shared it, through a
//! durable outbox that retries with backoff until delivered or past its deadline.

use std::sync::{Arc, Mutex};

use lanyard_core::Clock;
use lanyard_core::client::ClientRegistration;
use openidconnect::PkceCodeChallenge;

use crate::harness::{Browser, TestDb, TestServer, lanyard, register_client, run, stdout};

const PW: &str = "correct horse battery";

/// A relying app's back-channel endpoint: records logout tokens, fails the first `failures`.
pub(crate) struct Receiver {
    pub url: String,
    pub tokens: Arc<Mutex<Vec<String>>>,
    failures: Arc<Mutex<u32>>,
}

pub(crate) async fn receiver(failures: u32) -> Receiver {
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let left = Arc::new(Mutex::new(failures));
    let (t, l) = (tokens.clone(), left.clone());
    let app = axum::Router::new().route(
        "/backchannel",
        axum::routing::post(move |body: String| {
            let (t, l) = (t.clone(), l.clone());
            async move {
                let mut left = l.lock().unwrap();
                if *left > 0 {
                    *left -= 1;
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                let token = url::form_urlencoded::parse(body.as_bytes())
                    .find(|(k, _)| k == "logout_token")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                t.lock().unwrap().push(token);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/backchannel", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver {
        url,
        tokens,
        failures: left,
    }
}

/// An app with a back-channel URI, and a browser signed in to it through /authorize.
pub(crate) async fn signed_in_app(server: &TestServer, backchannel: &str) -> (Browser, String) {
    let reg = ClientRegistration {
        name: format!("Wiki {}", lanyard_core::secret::random_id(4).unwrap()),
        redirect_uris: vec!["http://localhost:9999/cb".into()],
        backchannel_logout_uri: Some(backchannel.into()),
        skip_consent: true,
        ..Default::default()
    };
    let (id, _) = register_client(&server.store, reg).await;
    let mut b = Browser::new(server);
    assert_eq!(b.sign_in("ada", PW).await.status, 303);
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("response_type", "code"),
        ("client_id", id.as_str()),
        ("redirect_uri", "http://localhost:9999/cb"),
        ("scope", "openid"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ] {
        q.append_pair(k, v);
    }
    let back = b
        .authorize(
            &format!("{}/authorize?{}", server.base, q.finish()),
            None,
            None,
        )
        .await
        .unwrap();
    assert!(back.query().unwrap().contains("code="));
    (b, id)
}

#[tokio::test]
async fn signing_out_sends_a_signed_logout_token_to_the_app() {
    let db = TestDb::new().await;
    let server = TestServer::start_on_localhost(&db).await;
    let ada = server.add_user("ada", PW).await;
    let app = receiver(0).await;
    let (mut b, client_id) = signed_in_app(&server, &app.url).await;
    let sid = server.sid_of(&b).await;

    let csrf = b.get("/account").await.csrf();
    b.post("/logout", &[("csrf", &csrf)]).await;
    lanyard_server::logout::deliver_due(&server.state, &lanyard_server::logout::http_client())
        .await;

    let tokens = app.tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), 1, "exactly one logout for the one app");
    let claims = server
        .state
        .keys
        .current()
        .verify(&tokens[0], "logout+jwt")
        .expect("signed by Lanyard");
    assert_eq!(claims["iss"], server.base.as_str());
    assert_eq!(claims["aud"], client_id.as_str());
    assert_eq!(claims["sub"], ada.as_str());
    assert_eq!(claims["sid"], sid.as_str());
    assert!(claims["events"]["http://schemas.openid.net/event/backchannel-logout"].is_object());
    assert!(claims.get("nonce").is_none(), "never a nonce");
    assert!(claims["jti"].is_string() && claims["exp"].as_i64() > claims["iat"].as_i64());

    let deliveries = server.store.logout_deliveries(10).await.unwrap();
    assert_eq!(deliveries[0].state, "delivered");
    let out = run(lanyard(&db).args(["logout", "deliveries"]), "");
    assert!(stdout(&out).contains("delivered"), "{}", stdout(&out));
    let kinds: Vec<String> = server
        .store
        .list_audit(Some(&ada), 50)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&"logout.delivered".to_owned()), "{kinds:?}");
}

#[tokio::test]
async fn failed_deliveries_are_retried_with_backoff_until_the_deadline() {
    let db = TestDb::new().await;
    let server = TestServer::start_on_localhost(&db).await;
    server.add_user("ada", PW).await;
    let app = receiver(2).await;
    let (mut b, _) = signed_in_app(&server, &app.url).await;
    let csrf = b.get("/account").await.csrf();
    b.post("/logout", &[("csrf", &csrf)]).await;
    let http = lanyard_server::logout::http_client();
    let deliver = || lanyard_server::logout::deliver_due(&server.state, &http);

    deliver().await;
    let d = server.store.logout_deliveries(1).await.unwrap().remove(0);
    assert_eq!((d.state.as_str(), d.attempts), ("pending", 1));
    assert!(d.last_error.as_deref().unwrap().contains("500"));
    assert_eq!(deliver().await, 0, "not due again yet");
    server.advance(3);
    deliver().await;
    let d = server.store.logout_deliveries(1).await.unwrap().remove(0);
    assert_eq!(d.attempts, 2);
    assert!(
        d.next_attempt_at.as_secs() >= server.clock.now().as_secs() + 4,
        "the wait doubles"
    );
    server.advance(5);
    deliver().await;
    assert_eq!(
        server.store.logout_deliveries(1).await.unwrap()[0].state,
        "delivered"
    );
    assert_eq!(app.tokens.lock().unwrap().len(), 1);

    // An app that never answers is given up on after the deadline, and that is audited.
    let dead = receiver(u32::MAX).await;
    let (mut b2, _) = signed_in_app(&server, &dead.url).await;
    let csrf = b2.get("/account").await.csrf();
    b2.post("/logout", &[("csrf", &csrf)]).await;
    deliver().await;
    server.advance(25 * 3600);
    deliver().await;
    let d = server.store.logout_deliveries(1).await.unwrap().remove(0);
    assert_eq!(d.state, "failed");
    let kinds: Vec<String> = server
        .store
        .list_audit(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&"logout.failed".to_owned()));
    drop(dead.failures);
}

#[tokio::test]
async fn every_way_a_session_ends_queues_a_logout() {
    let db = TestDb::new().await;
    let server = TestServer::start_on_localhost(&db).await;
    let ada = server.add_user("ada", PW).await;
    let app = receiver(0).await;
    let queued = || async { server.store.logout_deliveries(100).await.unwrap().len() };

    // Revoked from the CLI.
    let (b, _) = signed_in_app(&server, &app.url).await;
    let sid = server.sid_of(&b).await;
    assert!(
        run(lanyard(&db).args(["session", "revoke", &sid]), "")
            .status
            .success()
    );
    assert_eq!(queued().await, 1);
    // Idle expiry, found by the sweeper.
    let (_b, _) = signed_in_app(&server, &app.url).await;
    server.advance(31 * 60);
    lanyard_server::sweep(&server.state).await;
    assert_eq!(queued().await, 2);
    // The user disabled.
    let (_b, _) = signed_in_app(&server, &app.url).await;
    let e = lanyard_core::audit::NewAuditEvent::new(
        server.clock.now(),
        lanyard_core::audit::AuditKind::UserDisabled,
    );
    server.store.disable_user(&ada, &e).await.unwrap();
    assert_eq!(queued().await, 3);
    // A session no app took part in queues nothing.
    server.add_user("bob", PW).await;
    let mut bob = Browser::new(&server);
    bob.sign_in("bob", PW).await;
    let csrf = bob.get("/account").await.csrf();
    bob.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(queued().await, 3);
}

/// An app registered with a post-logout redirect, and a browser signed in to it; returns the
/// browser, the client ID and the ID token the app received.
async fn app_with_id_token(
    server: &TestServer,
    after: &str,
    frontchannel: Option<&str>,
) -> (Browser, String, String) {
    let reg = ClientRegistration {
        name: format!("Notes {}", lanyard_core::secret::random_id(4).unwrap()),
        redirect_uris: vec!["http://localhost:9999/cb".into()],
        post_logout_redirect_uris: vec![after.into()],
        frontchannel_logout_uri: frontchannel.map(str::to_owned),
        skip_consent: true,
        ..Default::default()
    };
    let (id, secret) = register_client(&server.store, reg).await;
    let mut b = Browser::new(server);
    assert_eq!(b.sign_in("ada", PW).await.status, 303);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("response_type", "code"),
        ("client_id", id.as_str()),
        ("redirect_uri", "http://localhost:9999/cb"),
        ("scope", "openid"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ] {
        q.append_pair(k, v);
    }
    let back = b
        .authorize(
            &format!("{}/authorize?{}", server.base, q.finish()),
            None,
            None,
        )
        .await
        .unwrap();
    let code = back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let r = reqwest::Client::new()
        .post(format!("{}/token", server.base))
        .basic_auth(&id, secret.as_deref())
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://localhost:9999/cb"),
            ("code_verifier", verifier.secret()),
        ])
        .send()
        .await
        .unwrap();
    let t: serde_json::Value = r.json().await.unwrap();
    (b, id, t["id_token"].as_str().unwrap().to_owned())
}

fn end_session_url(server: &TestServer, params: &[(&str, &str)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        q.append_pair(k, v);
    }
    format!("{}/end_session?{}", server.base, q.finish())
}

#[tokio::test]
async fn rp_initiated_logout_with_a_hint_signs_out_and_returns_to_the_app() {
    let db = TestDb::new().await;
    // Sessions that outlive the one-hour ID token, to show an expired hint still works.
    let server = TestServer::start_on_localhost_with(&db, |c| {
        c.session.idle_timeout = std::time::Duration::from_secs(4 * 3600);
    })
    .await;
    server.add_user("ada", PW).await;
    let after = "http://localhost:9999/signed-out";
    let (mut b, _id, id_token) = app_with_id_token(&server, after, None).await;
    // Expired hints are fine.
    server.advance(2 * 3600);
    b.get("/account").await;
    let url = end_session_url(
        &server,
        &[
            ("id_token_hint", &id_token),
            ("post_logout_redirect_uri", after),
            ("state", "s-1"),
        ],
    );
    let r = b.open(&url).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        r.location(),
        Some("http://localhost:9999/signed-out?state=s-1")
    );
    assert!(b.session_cookie().is_none());
    assert!(
        server.sessions(None).await.unwrap().is_empty(),
        "the session ended"
    );
    let meta: serde_json::Value =
        reqwest::get(format!("{}/.well-known/openid-configuration", server.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(
        meta["end_session_endpoint"],
        format!("{}/end_session", server.base)
    );
}

#[tokio::test]
async fn without_a_hint_the_user_confirms_and_bad_requests_get_a_page() {
    let db = TestDb::new().await;
    let server = TestServer::start_on_localhost(&db).await;
    server.add_user("ada", PW).await;
    let after = "http://localhost:9999/signed-out";
    let (mut b, id, _) = app_with_id_token(&server, after, None).await;

    let r = b
        .open(&end_session_url(
            &server,
            &[("id_token_hint", "not.a.token")],
        ))
        .await;
    assert_eq!(r.status, 400, "a malformed hint gets a page");
    assert!(r.location().is_none());

    let url = end_session_url(
        &server,
        &[
            ("client_id", &id),
            ("post_logout_redirect_uri", "http://evil.example/"),
            ("state", "x"),
        ],
    );
    let page = b.open(&url).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(">Sign out</button>"), "asks first");
    assert_eq!(
        server.sessions(None).await.unwrap().len(),
        1,
        "nothing ended yet"
    );
    let mut form = crate::harness::hidden_fields(&page.body);
    let pairs: Vec<(&str, &str)> = form
        .iter()
        .filter(|(k, _)| k != "csrf")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut forged = pairs.clone();
    forged.push(("csrf", "forged"));
    assert_eq!(b.post("/end_session/confirm", &forged).await.status, 403);
    form.retain(|_| true);
    let all: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let done = b.post("/end_session/confirm", &all).await;
    assert_eq!(
        done.status, 200,
        "an unregistered post-logout URI gets a page, not a redirect"
    );
    assert!(
        done.body.contains("You are signed out") && done.body.contains("Notes "),
        "{}",
        done.body
    );
    assert!(server.sessions(None).await.unwrap().is_empty());
}

fn csp(page: &crate::harness::Page) -> &str {
    page.headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn front_channel_apps_are_framed_on_the_signed_out_page() {
    let db = TestDb::new().await;
    let server = TestServer::start_on_localhost(&db).await;
    server.add_user("ada", PW).await;
    let after = "http://localhost:9999/signed-out";
    let frontchannel = "http://localhost:9998/fc?app=notes";
    let (mut b, _id, id_token) = app_with_id_token(&server, after, Some(frontchannel)).await;
    let sid = server.sid_of(&b).await;
    assert!(
        !csp(&b.get("/account").await).contains("frame-src"),
        "other pages frame nothing"
    );

    let url = end_session_url(
        &server,
        &[
            ("id_token_hint", &id_token),
            ("post_logout_redirect_uri", after),
            ("state", "s-2"),
        ],
    );
    let r = b.open(&url).await;
    assert_eq!(
        r.status, 200,
        "a page to load the frames in, not a redirect"
    );
    let mut expected = url::Url::parse(frontchannel).unwrap();
    expected
        .query_pairs_mut()
        .append_pair("iss", &server.base)
        .append_pair("sid", &sid);
    let body = crate::harness::unescape(&r.body);
    assert!(
        body.contains(&format!(
            "<iframe class=\"logout-frame\" src=\"{expected}\""
        )),
        "{body}"
    );
    assert!(
        body.contains("third-party cookies"),
        "says it is best-effort"
    );
    assert!(
        body.contains(&format!("content=\"3;url={after}?state=s-2\"")),
        "then moves on to the registered URI: {body}"
    );
    assert!(
        csp(&r).ends_with("; frame-src http://localhost:9998"),
        "{}",
        csp(&r)
    );
    assert!(server.sessions(None).await.unwrap().is_empty());

    // Lanyard's own sign-out frames them too, instead of going straight back to /login.
    let (mut b, _, _) = app_with_id_token(&server, after, Some(frontchannel)).await;
    let sid = server.sid_of(&b).await;
    let csrf = b.get("/account").await.csrf();
    let r = b.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 200);
    assert!(crate::harness::unescape(&r.body).contains(&format!("sid={sid}")));
    assert!(r.body.contains("Sign in again"));
}
