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
