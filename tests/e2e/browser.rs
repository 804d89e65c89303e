//! Pages in a real browser: Debian's Chromium driven by playwright-core (`tests/browser`).
//!
//! These run when Chromium and `tests/browser/node_modules` are present (`.ci/run` installs
//! both and sets `LANYARD_TEST_REQUIRE_BROWSER=1`, which turns their absence into a failure);
//! elsewhere they say they were skipped.

use std::path::{Path, PathBuf};

use crate::harness::{TestDb, TestServer};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser")
}

fn available() -> bool {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ok = Path::new(&chromium).exists()
        && browser_dir().join("node_modules/playwright-core").exists();
    if !ok {
        assert!(
            std::env::var("LANYARD_TEST_REQUIRE_BROWSER").is_err(),
            "LANYARD_TEST_REQUIRE_BROWSER is set but Chromium or tests/browser/node_modules is missing"
        );
        eprintln!(
            "skipped: install chromium and run `npm ci` in tests/browser to run browser tests"
        );
    }
    ok
}

async fn node(script: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new("node");
    cmd.current_dir(browser_dir()).arg(script).args(args);
    // The server runs on this test's runtime: wait for node on another thread.
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("node runs");
    assert!(
        out.status.success(),
        "{script} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test]
async fn a_person_signs_in_and_out_on_a_phone_sized_browser() {
    if !available() {
        return;
    }
    let db = TestDb::new().await;
    let server = TestServer::start_on_localhost(&db).await;
    let ada = server.add_user("ada", "correct horse battery").await;
    node(
        "signin.mjs",
        &[&server.base, "ada", "correct horse battery"],
    )
    .await;

    let events = server.store.list_audit(Some(&ada), 20).await.unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
    for expected in [
        "signin.failed",
        "signin.succeeded",
        "session.started",
        "session.ended",
    ] {
        assert!(
            kinds.contains(&expected),
            "{expected} missing from {kinds:?}"
        );
    }
    assert!(
        server.sessions(None).await.unwrap().is_empty(),
        "signed out for real"
    );
}

/// openid-client, the certified Node.js relying party, signs in through the login page in
/// Chromium, validates the ID token, reads userinfo and refreshes.
#[tokio::test]
async fn openid_client_for_node_signs_in_and_refreshes() {
    if !available() {
        return;
    }
    let db = TestDb::new().await;
    let server = TestServer::start_on_localhost(&db).await;
    let ada = server.add_user("ada", "correct horse battery").await;
    let redirect = "http://localhost:9/callback";
    let reg = lanyard_core::client::ClientRegistration {
        name: "Node app".into(),
        redirect_uris: vec![redirect.into()],
        skip_consent: true,
        ..Default::default()
    };
    let (id, secret) = crate::harness::register_client(&server.store, reg).await;
    let secret = secret.unwrap();
    let out = node(
        "openid-client.mjs",
        &[
            &server.base,
            &id,
            &secret,
            redirect,
            "ada",
            "correct horse battery",
        ],
    )
    .await;
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["sub"], ada.as_str());
    assert_eq!(result["refreshed_sub"], ada.as_str());
    assert_eq!(result["email"], "ada@example.org");
    assert_eq!(result["preferred_username"], "ada");
    assert_eq!(result["rotated"], true);
}

/// WebAuthn in Chromium with the DevTools virtual authenticator: a passkey signs in without a
/// username; a security key is the second step after the password.
#[tokio::test]
async fn passkeys_and_security_keys_in_a_real_browser() {
    if !available() {
        return;
    }
    let db = TestDb::new().await;
    let server = TestServer::start_on_localhost(&db).await;
    let ada = server.add_user("ada", "correct horse battery").await;
    node(
        "passkey.mjs",
        &[&server.base, "ada", "correct horse battery"],
    )
    .await;

    let keys = server.store.webauthn_credentials(&ada).await.unwrap();
    let mut kinds: Vec<&str> = keys.iter().map(|k| k.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["passkey", "security_key"]);
    assert!(
        keys.iter().all(|k| k.last_used_at.is_some()),
        "both were used"
    );
    let sessions = server.sessions(Some(&ada)).await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        sessions[0].amr,
        ["pwd", "hwk", "mfa"],
        "password and security key"
    );
    let events: Vec<String> = server
        .store
        .list_audit(Some(&ada), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        events
            .iter()
            .filter(|k| *k == "webauthn.registered")
            .count(),
        2
    );
}

/// An app asks for MFA with `acr_values`; the user has no second factor yet, so Lanyard leads
/// them through setting up an authenticator in Chromium and back to the app, whose ID token
/// then says MFA. A later sign-in takes the password and a code.
#[tokio::test]
async fn acr_values_lead_to_authenticator_enrolment_in_a_real_browser() {
    if !available() {
        return;
    }
    let db = TestDb::new().await;
    let server = TestServer::start_on_localhost(&db).await;
    server.add_user("bob", "correct horse battery").await;
    let redirect = "http://localhost:9/callback";
    let reg = lanyard_core::client::ClientRegistration {
        name: "App".into(),
        redirect_uris: vec![redirect.into()],
        skip_consent: true,
        ..Default::default()
    };
    let (id, secret) = crate::harness::register_client(&server.store, reg).await;
    let (challenge, verifier) = openidconnect::PkceCodeChallenge::new_random_sha256();
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("response_type", "code"),
        ("client_id", id.as_str()),
        ("redirect_uri", redirect),
        ("scope", "openid"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("acr_values", lanyard_core::mfa::ACR_MFA),
    ] {
        q.append_pair(k, v);
    }
    let url = format!("{}/authorize?{}", server.base, q.finish());
    let now = lanyard_core::Clock::now(&*server.clock)
        .as_secs()
        .to_string();
    let out = node(
        "totp.mjs",
        &[
            &server.base,
            &url,
            redirect,
            "bob",
            "correct horse battery",
            &now,
        ],
    )
    .await;
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let callback = url::Url::parse(result["callback"].as_str().unwrap()).unwrap();
    let code = callback
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("a code");

    let r = reqwest::Client::new()
        .post(format!("{}/token", server.base))
        .basic_auth(&id, secret.as_deref())
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect),
            ("code_verifier", verifier.secret()),
        ])
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    use base64::Engine as _;
    let claims = body["id_token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .to_owned();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["acr"], lanyard_core::mfa::ACR_MFA);
    assert_eq!(claims["amr"], serde_json::json!(["pwd", "otp", "mfa"]));
}

/// The single sign-on walk of the README in Chromium, with two demo apps: App A hears of
/// sign-outs through the back channel, App B through a frame on Lanyard's signed-out page.
#[tokio::test]
async fn two_apps_share_one_sign_in_and_one_sign_out() {
    use crate::sso::{Channel, Demo};
    if !available() {
        return;
    }
    let db = TestDb::new().await;
    let server = TestServer::start_on_localhost_with(&db, |c| {
        c.logout.poll_interval = std::time::Duration::from_millis(200);
    })
    .await;
    server.add_user("ada", "correct horse battery").await;
    let a = Demo::start(&server, "App A", Channel::Back).await;
    let b = Demo::start(&server, "App B", Channel::Front).await;
    node(
        "sso.mjs",
        &[&server.base, &a.url, &b.url, "ada", "correct horse battery"],
    )
    .await;
    assert!(a.app.signed_in_sids().is_empty());
    assert!(b.app.signed_in_sids().is_empty());
}
