//! Second factors: enrolling an authenticator, signing in with it or a recovery code, and the
//! ways an attacker would try to get around them.

use lanyard_core::Clock;
use lanyard_core::mfa::TotpSecret;

use crate::harness::{Browser, Page, TestDb, TestServer, field};

const PW: &str = "correct horse battery";

/// Enrols an authenticator for the signed-in browser; returns its secret and recovery codes.
async fn enrol(server: &TestServer, b: &mut Browser) -> (TotpSecret, Vec<String>) {
    let page = b.get("/account/totp").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("<svg"),
        "a QR code rendered on the server"
    );
    assert!(
        page.body.contains("href=\"otpauth://totp/"),
        "the otpauth URI as a link"
    );
    assert!(page.body.contains("autocomplete=\"one-time-code\""));
    let b32 = page
        .body
        .split("<code class=\"secret\">")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_owned();
    let secret = TotpSecret::from_base32(&b32).expect("the secret as text");
    let wrong = b
        .post(
            "/account/totp",
            &[("csrf", &page.csrf()), ("code", "000000")],
        )
        .await;
    assert_eq!(wrong.status, 400, "a wrong code does not turn it on");
    // The page after a wrong code shows a new secret.
    let b32 = wrong
        .body
        .split("<code class=\"secret\">")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_owned();
    let secret2 = TotpSecret::from_base32(&b32).unwrap();
    let code = secret2.code_at(server.clock.now()).unwrap();
    let done = b
        .post("/account/totp", &[("csrf", &wrong.csrf()), ("code", &code)])
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    let codes: Vec<String> = done
        .body
        .split("<li><code>")
        .skip(1)
        .map(|c| c.split('<').next().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    drop(secret);
    (secret2, codes)
}

async fn second_step(b: &mut Browser, code: &str) -> Page {
    let page = b.get("/login/mfa").await;
    assert_eq!(page.status, 200, "the second step shows");
    b.post("/login/mfa", &[("csrf", &page.csrf()), ("code", code)])
        .await
}

#[tokio::test]
async fn an_authenticator_is_asked_for_after_the_password_and_codes_work_once() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    let ada = server.add_user("ada", PW).await;
    let mut b = Browser::new(&server);
    b.sign_in("ada", PW).await;
    let (secret, _) = enrol(&server, &mut b).await;
    let account = b.get("/account").await;
    assert!(
        account
            .body
            .contains("Authenticator app: <strong>on</strong>")
    );
    assert!(
        account
            .body
            .contains("Recovery codes left: <strong>10</strong>")
    );

    // A password alone gets no session now.
    server.advance(60);
    let mut phone = Browser::new(&server);
    let r = phone.sign_in("ada", PW).await;
    assert_eq!((r.status, r.location()), (303, Some("/login/mfa")));
    assert!(
        phone.session_cookie().is_none(),
        "no session before the second factor"
    );
    assert_eq!(phone.get("/account").await.status, 303);

    assert_eq!(second_step(&mut phone, "123456").await.status, 401);
    let code = secret.code_at(server.clock.now()).unwrap();
    let r = second_step(&mut phone, &code).await;
    assert_eq!((r.status, r.location()), (303, Some("/account")));
    assert!(phone.session_cookie().is_some());
    let s = server
        .store
        .session_by_digest(&lanyard_core::secret::digest(
            &phone.session_cookie().unwrap(),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.amr, ["pwd", "otp", "mfa"]);
    assert_eq!(
        phone.get("/login/mfa").await.status,
        303,
        "the pending sign-in is gone"
    );

    // The same code (same 30-second step) does not work twice.
    let mut thief = Browser::new(&server);
    thief.sign_in("ada", PW).await;
    assert_eq!(
        second_step(&mut thief, &code).await.status,
        401,
        "a replayed code"
    );
    // The next step's code does; the previous step's no longer (it is older than the last used).
    server.advance(30);
    let next = secret.code_at(server.clock.now()).unwrap();
    assert_eq!(second_step(&mut thief, &next).await.status, 303);

    let kinds: Vec<String> = server
        .store
        .list_audit(Some(&ada), 50)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    for k in ["mfa.enrolled", "mfa.failed", "mfa.succeeded"] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
}

#[tokio::test]
async fn recovery_codes_work_once_and_can_be_renewed() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    server.add_user("ada", PW).await;
    let mut b = Browser::new(&server);
    b.sign_in("ada", PW).await;
    let (_, codes) = enrol(&server, &mut b).await;

    let mut lost_phone = Browser::new(&server);
    lost_phone.sign_in("ada", PW).await;
    let r = second_step(&mut lost_phone, &codes[0].to_lowercase()).await;
    assert_eq!(r.status, 303, "a recovery code, typed any case");
    assert!(
        lost_phone
            .get("/account")
            .await
            .body
            .contains("Recovery codes left: <strong>9</strong>")
    );

    let mut again = Browser::new(&server);
    again.sign_in("ada", PW).await;
    assert_eq!(
        second_step(&mut again, &codes[0]).await.status,
        401,
        "used once already"
    );

    let csrf = b.get("/account").await.csrf();
    let renewed = b.post("/account/recovery-codes", &[("csrf", &csrf)]).await;
    assert_eq!(renewed.status, 200);
    assert_eq!(renewed.body.matches("<li><code>").count(), 10);
    assert_eq!(
        second_step(&mut again, &codes[1]).await.status,
        401,
        "old codes stop working"
    );
}

#[tokio::test]
async fn second_factor_guesses_are_throttled_and_the_step_needs_a_password_first() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    server.add_user("ada", PW).await;
    let mut b = Browser::new(&server);
    b.sign_in("ada", PW).await;
    let (secret, _) = enrol(&server, &mut b).await;
    server.advance(60);

    let mut guesser = Browser::new(&server);
    guesser.sign_in("ada", PW).await;
    for _ in 0..5 {
        assert_eq!(second_step(&mut guesser, "000000").await.status, 401);
    }
    assert_eq!(second_step(&mut guesser, "000001").await.status, 429);
    let right = secret.code_at(server.clock.now()).unwrap();
    assert_eq!(
        second_step(&mut guesser, &right).await.status,
        429,
        "even the right code waits"
    );

    // Without a right password first there is nothing to answer.
    let mut stranger = Browser::new(&server);
    assert_eq!(stranger.get("/login/mfa").await.status, 303);
    stranger
        .cookies
        .insert("lanyard_mfa".into(), "A".repeat(43));
    assert_eq!(stranger.get("/login/mfa").await.status, 303);
    let r = stranger
        .post("/login/mfa", &[("csrf", "x"), ("code", &right)])
        .await;
    assert_eq!(
        r.status, 303,
        "a forged pending cookie leads back to /login"
    );
    assert!(stranger.session_cookie().is_none());

    // The pending sign-in expires.
    let mut slow = Browser::new(&server);
    slow.sign_in("ada", PW).await;
    server.advance(301);
    assert_eq!(slow.get("/login/mfa").await.status, 303);

    // CSRF on the second step.
    let mut other = Browser::from_ip(&server, "127.0.0.7");
    other.sign_in("ada", PW).await;
    let r = other
        .post("/login/mfa", &[("csrf", "forged"), ("code", "123456")])
        .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn removing_the_authenticator_needs_the_password() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    server.add_user("ada", PW).await;
    let mut b = Browser::new(&server);
    b.sign_in("ada", PW).await;
    enrol(&server, &mut b).await;
    let csrf = b.get("/account").await.csrf();
    let r = b
        .post(
            "/account/totp/remove",
            &[("csrf", &csrf), ("password", "wrong")],
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Authenticator app: <strong>on</strong>"));
    let r = b
        .post("/account/totp/remove", &[("csrf", &csrf), ("password", PW)])
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("Set up authenticator app"));
    let mut fresh = Browser::new(&server);
    assert_eq!(
        fresh.sign_in("ada", PW).await.location(),
        Some("/account"),
        "no second step any more"
    );
    assert!(field(&r.body, "csrf").is_some());
}

mod policy {
    use lanyard_core::Clock;
    use lanyard_core::client::ClientRegistration;
    use openidconnect::PkceCodeChallenge;

    use super::{PW, enrol, second_step};
    use crate::harness::{Browser, TestDb, TestServer, register_client};

    const REDIRECT: &str = "http://localhost:9999/callback";

    fn authorize_url(server: &TestServer, client_id: &str, extra: &[(&str, &str)]) -> String {
        let (challenge, _) = PkceCodeChallenge::new_random_sha256();
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", REDIRECT),
            ("scope", "openid"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        {
            q.append_pair(k, v);
        }
        format!("{}/authorize?{}", server.base, q.finish())
    }

    fn query(url: &url::Url) -> std::collections::HashMap<String, String> {
        url.query_pairs().into_owned().collect()
    }

    async fn client(server: &TestServer, require_mfa: bool) -> String {
        let reg = ClientRegistration {
            name: format!("App {require_mfa}"),
            redirect_uris: vec![REDIRECT.into()],
            skip_consent: true,
            require_mfa,
            ..Default::default()
        };
        register_client(&server.store, reg).await.0
    }

    #[tokio::test]
    async fn acr_values_asking_for_mfa_steps_a_password_session_up() {
        let db = TestDb::new().await;
        let server = TestServer::start(&db, |_| {}).await;
        server.add_user("ada", PW).await;
        let app = client(&server, false).await;
        let mut old = Browser::new(&server);
        old.sign_in("ada", PW).await;
        let mut b = Browser::new(&server);
        b.sign_in("ada", PW).await;
        let (secret, _) = enrol(&server, &mut b).await;
        server.advance(60);

        let mfa = [("acr_values", lanyard_core::mfa::ACR_MFA)];
        let none = [
            ("acr_values", lanyard_core::mfa::ACR_MFA),
            ("prompt", "none"),
        ];
        let back = old
            .authorize(&authorize_url(&server, &app, &none), None, None)
            .await
            .unwrap();
        assert_eq!(query(&back)["error"], "interaction_required");

        let before = old.session_cookie().unwrap();
        let page = old
            .authorize(&authorize_url(&server, &app, &mfa), None, None)
            .await
            .expect_err("the second step");
        assert!(page.body.contains("action=\"/login/mfa\""), "{}", page.body);
        let r = second_step(&mut old, &secret.code_at(server.clock.now()).unwrap()).await;
        assert_eq!(r.status, 303);
        assert_ne!(
            old.session_cookie().unwrap(),
            before,
            "step-up issues a new session ID"
        );
        let back = old.open(r.location().unwrap()).await;
        let back = url::Url::parse(back.location().unwrap()).unwrap();
        assert!(query(&back).contains_key("code"), "{back}");
    }

    #[tokio::test]
    async fn a_client_requiring_mfa_leads_a_user_without_one_to_enrol_first() {
        let db = TestDb::new().await;
        let server = TestServer::start(&db, |_| {}).await;
        server.add_user("ada", PW).await;
        let app = client(&server, true).await;
        let mut b = Browser::new(&server);
        b.sign_in("ada", PW).await;
        let url = authorize_url(&server, &app, &[]);
        let page = b.open(&url).await;
        assert_eq!(page.status, 303);
        let enrol_at = page.location().unwrap().to_owned();
        assert!(
            enrol_at.starts_with("/account/totp?return_to="),
            "{enrol_at}"
        );
        let form = b.open(&enrol_at).await;
        assert!(form.body.contains("required to continue"));
        let b32 = form
            .body
            .split("<code class=\"secret\">")
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap()
            .to_owned();
        let secret = lanyard_core::mfa::TotpSecret::from_base32(&b32).unwrap();
        let return_to = crate::harness::field(&form.body, "return_to")
            .map(|r| crate::harness::unescape(&r))
            .unwrap();
        let code = secret.code_at(server.clock.now()).unwrap();
        let done = b
            .post(
                "/account/totp",
                &[
                    ("csrf", &form.csrf()),
                    ("code", &code),
                    ("return_to", &return_to),
                ],
            )
            .await;
        assert_eq!(done.status, 200);
        assert!(done.body.contains(">Continue</a>"));
        let back = b.authorize(&return_to, None, None).await.unwrap();
        let code = query(&back)["code"].clone();
        assert!(!code.is_empty());
        let s = server.sessions(None).await.unwrap();
        assert!(
            s[0].amr.contains(&"mfa".to_owned()),
            "the enrolment stepped the session up: {:?}",
            s[0].amr
        );
    }

    #[tokio::test]
    async fn an_operator_can_require_mfa_for_everyone() {
        let db = TestDb::new().await;
        let server = TestServer::start(&db, |c| c.mfa.required = true).await;
        server.add_user("ada", PW).await;
        let mut b = Browser::new(&server);
        let r = b.sign_in("ada", PW).await;
        assert!(
            r.location()
                .unwrap()
                .starts_with("/account/totp?return_to="),
            "{:?}",
            r.location()
        );
    }
}

#[tokio::test]
async fn keys_are_renamed_and_removed_only_by_their_owner() {
    use lanyard_core::audit::{AuditKind, NewAuditEvent};
    use lanyard_core::mfa::{KeyKind, WebauthnCredential};
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    let ada = server.add_user("ada", PW).await;
    let bob = server.add_user("bob", PW).await;
    let now = server.clock.now();
    for (user, id) in [(&ada, "ada-key"), (&bob, "bob-key")] {
        let c = WebauthnCredential {
            credential_id: id.into(),
            user_id: user.clone(),
            kind: KeyKind::SecurityKey,
            name: "Key".into(),
            credential: "{}".into(),
            created_at: now,
            last_used_at: None,
        };
        server
            .store
            .add_webauthn_credential(&c, &NewAuditEvent::new(now, AuditKind::KeyRegistered))
            .await
            .unwrap();
    }
    let mut b = Browser::new(&server);
    // ada has a security key now, so her sign-in asks for a second step; use a recovery code.
    let codes = lanyard_core::mfa::new_recovery_codes().unwrap();
    let digests: Vec<String> = codes
        .iter()
        .map(|c| lanyard_core::mfa::recovery_digest(ada.as_str(), c))
        .collect();
    server
        .store
        .replace_recovery_codes(
            &ada,
            &digests,
            &NewAuditEvent::new(now, AuditKind::RecoveryCodesRenewed),
        )
        .await
        .unwrap();
    b.sign_in("ada", PW).await;
    assert_eq!(second_step(&mut b, &codes[0]).await.status, 303);
    let csrf = b.get("/account").await.csrf();

    let r = b
        .post(
            "/account/keys/rename",
            &[("csrf", &csrf), ("key", "bob-key"), ("name", "Mine now")],
        )
        .await;
    assert_eq!(r.status, 404);
    let r = b
        .post(
            "/account/keys/remove",
            &[("csrf", &csrf), ("key", "bob-key"), ("password", PW)],
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        server
            .store
            .webauthn_credential("bob-key")
            .await
            .unwrap()
            .unwrap()
            .name,
        "Key"
    );

    let r = b
        .post(
            "/account/keys/rename",
            &[("csrf", &csrf), ("key", "ada-key"), ("name", "")],
        )
        .await;
    assert_eq!(r.status, 400);
    let r = b
        .post(
            "/account/keys/rename",
            &[("csrf", &csrf), ("key", "ada-key"), ("name", "Desk key")],
        )
        .await;
    assert_eq!(r.status, 303);
    assert!(b.get("/account").await.body.contains("Desk key"));
    assert_eq!(
        b.post(
            "/account/keys/remove",
            &[("csrf", "forged"), ("key", "ada-key"), ("password", PW)]
        )
        .await
        .status,
        403
    );
    let r = b
        .post(
            "/account/keys/remove",
            &[("csrf", &csrf), ("key", "ada-key"), ("password", "wrong")],
        )
        .await;
    assert_eq!(r.status, 401, "removing a key needs the password");
    assert_eq!(
        b.post(
            "/account/keys/remove",
            &[("csrf", &csrf), ("key", "ada-key"), ("password", PW)]
        )
        .await
        .status,
        303
    );
    assert!(
        server
            .store
            .webauthn_credential("ada-key")
            .await
            .unwrap()
            .is_none()
    );

    // The passkey endpoints answer only a browser that loaded the sign-in page, with its token.
    let mut stranger = Browser::new(&server);
    assert_eq!(
        stranger.post("/login/passkey/start", &[]).await.status,
        400,
        "no pre-session"
    );
    let login = stranger.get("/login").await;
    let r = stranger
        .post_with("/login/passkey/start", &[], ("x-csrf-token", "forged"))
        .await;
    assert_eq!(r.status, 403);
    let token = crate::harness::field(&login.body, "csrf").unwrap();
    let r = stranger
        .post_with("/login/passkey/start", &[], ("x-csrf-token", &token))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"challenge\""));
}

#[tokio::test]
async fn a_session_that_skipped_the_second_factor_cannot_change_the_factors() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    server.add_user("ada", PW).await;
    // A session from before the authenticator existed: password only.
    let mut old = Browser::new(&server);
    old.sign_in("ada", PW).await;
    let mut b = Browser::new(&server);
    b.sign_in("ada", PW).await;
    enrol(&server, &mut b).await;

    let page = old.get("/account").await;
    assert!(page.body.contains("confirm it's you"), "the page says why");
    let csrf = page.csrf();
    for (path, form) in [
        ("/account/recovery-codes", vec![("csrf", csrf.as_str())]),
        (
            "/account/totp/remove",
            vec![("csrf", csrf.as_str()), ("password", PW)],
        ),
    ] {
        let r = old.post(path, &form).await;
        assert_eq!(
            (r.status, r.location()),
            (303, Some("/account/step-up")),
            "{path}"
        );
    }
    assert_eq!(
        old.get("/account/totp").await.location(),
        Some("/account/step-up")
    );
    let r = old
        .post_json(
            "/account/keys/start",
            &serde_json::json!({"kind": "passkey"}),
            &csrf,
        )
        .await;
    assert_eq!(
        r.status, 403,
        "no new key from a password-only session: {}",
        r.body
    );
    let fresh = b.get("/account").await.csrf();
    let r = b
        .post_json(
            "/account/keys/start",
            &serde_json::json!({"kind": "passkey"}),
            &fresh,
        )
        .await;
    assert_eq!(
        r.status, 200,
        "the session that passed the factor may: {}",
        r.body
    );
    assert!(
        b.get("/account")
            .await
            .body
            .contains("Authenticator app: <strong>on</strong>"),
        "still on"
    );
}
