//! Sign-in and the session store, attacked the ways an attacker would.

use lanyard_core::Clock;
use lanyard_core::secret::digest;

use crate::harness::{Browser, TestDb, TestServer, query_strings};

const PW: &str = "correct horse battery";

async fn audit_kinds(server: &TestServer) -> Vec<String> {
    let events = server.store.list_audit(None, 100).await.unwrap();
    events
        .into_iter()
        .map(|e| format!("{} {}", e.kind, e.detail).trim().to_owned())
        .collect()
}

#[tokio::test]
async fn sign_in_sets_a_safe_cookie_and_the_store_keeps_only_its_digest() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    server.add_user("ada", PW).await;
    let mut b = Browser::new(&server);

    let login = b.get("/login").await;
    assert_eq!(login.status, 200);
    assert!(login.body.contains(r#"autocomplete="username webauthn""#));
    assert!(login.body.contains(r#"autocomplete="current-password""#));
    assert!(login.body.contains(">Sign in</button>"));
    let csp = login.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(login.headers["x-content-type-options"], "nosniff");
    assert_eq!(login.headers["referrer-policy"], "no-referrer");
    assert_eq!(login.headers["cache-control"], "no-store");
    assert!(
        login.headers.get("strict-transport-security").is_none(),
        "not over http"
    );
    let pre = b.cookies["lanyard_pre"].clone();

    let r = b
        .post(
            "/login",
            &[
                ("csrf", &login.csrf()),
                ("username", "ADA"),
                ("password", PW),
            ],
        )
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location(), Some("/account"));
    let set = r
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("lanyard_session="))
        .unwrap();
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains("Secure"), "plain-http issuer: {set}");
    assert!(
        !b.cookies.contains_key("lanyard_pre"),
        "the pre-session cookie is cleared"
    );
    let id = b.session_cookie().unwrap();
    assert_eq!(id.len(), 43, "32 bytes, base64url");
    assert_ne!(id, pre, "the pre-session is never promoted");

    let rows = query_strings(
        &db,
        "SELECT id_digest || '|' || public_id || '|' || user_id FROM sessions",
    )
    .await;
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].contains(&id), "the raw session ID is not stored");
    assert!(rows[0].starts_with(&digest(&id)));

    let account = b.get("/account").await;
    assert_eq!(account.status, 200);
    assert!(account.body.contains("Signed in as <strong>ada</strong>"));
    assert!(account.body.contains("this device"));
    assert!(account.body.contains("Firefox on Linux"));
    assert!(account.body.contains("127.0.0.1"));

    let kinds = audit_kinds(&server).await;
    assert!(
        kinds.iter().any(|k| k.starts_with("session.started")),
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|k| k == "signin.succeeded"), "{kinds:?}");
}

#[tokio::test]
async fn https_issuers_get_host_prefixed_secure_cookies_and_hsts() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |c| {
        c.issuer = "https://id.example.org".to_owned().try_into().unwrap();
    })
    .await;
    server.add_user("ada", PW).await;
    let mut b = Browser::new(&server);
    let login = b.get("/login").await;
    assert!(
        login.headers["strict-transport-security"]
            .to_str()
            .unwrap()
            .contains("max-age=")
    );
    assert!(b.cookies.contains_key("__Host-lanyard_pre"));
    let r = b
        .post(
            "/login",
            &[
                ("csrf", &login.csrf()),
                ("username", "ada"),
                ("password", PW),
            ],
        )
        .await;
    let set = r
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-lanyard_session="))
        .unwrap();
    assert!(
        set.contains("; Secure") && set.contains("Path=/") && !set.contains("Domain"),
        "{set}"
    );
}

#[tokio::test]
async fn wrong_password_unknown_user_and_disabled_user_look_the_same() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    let ada = server.add_user("ada", PW).await;
    server.add_user("bob", PW).await;
    let bob = server
        .store
        .user_by_username(&lanyard_core::user::Username::parse("bob").unwrap())
        .await
        .unwrap()
        .unwrap();
    let e = lanyard_core::audit::NewAuditEvent::new(
        server.clock.now(),
        lanyard_core::audit::AuditKind::UserDisabled,
    );
    server.store.disable_user(&bob.id, &e).await.unwrap();

    let mut answers = Vec::new();
    for (user, pw) in [
        ("ada", "wrong password"),
        ("nobody", PW),
        ("bob", PW),
        ("a d a", PW),
    ] {
        let mut b = Browser::new(&server);
        let r = b.sign_in(user, pw).await;
        assert_eq!(r.status, 401, "{user}");
        assert!(b.session_cookie().is_none());
        let msg = r
            .body
            .split("role=\"alert\">")
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap()
            .to_owned();
        answers.push(msg);
    }
    assert!(
        answers
            .iter()
            .all(|a| a == "Incorrect username or password."),
        "{answers:?}"
    );
    let failed = server.store.list_audit(Some(&ada), 10).await.unwrap();
    assert!(failed.iter().any(|e| e.kind == "signin.failed"));
}

#[tokio::test]
async fn a_planted_session_id_is_never_adopted() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    server.add_user("ada", PW).await;
    let planted = "A".repeat(43);
    let mut victim = Browser::new(&server);
    victim
        .cookies
        .insert("lanyard_session".into(), planted.clone());
    victim.cookies.insert("lanyard_pre".into(), planted.clone());
    assert_eq!(
        victim.get("/account").await.status,
        303,
        "a planted ID opens nothing"
    );
    let login = victim.get("/login").await;
    let r = victim
        .post(
            "/login",
            &[
                ("csrf", &login.csrf()),
                ("username", "ada"),
                ("password", PW),
            ],
        )
        .await;
    assert_eq!(r.status, 303);
    let issued = victim.session_cookie().unwrap();
    assert_ne!(issued, planted);

    let mut attacker = Browser::new(&server);
    attacker.cookies.insert("lanyard_session".into(), planted);
    assert_eq!(attacker.get("/account").await.status, 303);
    assert_eq!(victim.get("/account").await.status, 200);
    assert_eq!(server.sessions(None).await.unwrap().len(), 1);
}

#[tokio::test]
async fn tampered_and_malformed_cookies_are_signed_out_not_errors() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    server.add_user("ada", PW).await;
    let mut b = Browser::new(&server);
    b.sign_in("ada", PW).await;
    let good = b.session_cookie().unwrap();
    let mut flipped = good.clone().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    for bad in [
        String::from_utf8(flipped).unwrap(),
        format!("{good}x"),
        "%00%ff".into(),
        String::new(),
        "x".repeat(5000),
    ] {
        let mut t = Browser::new(&server);
        t.cookies.insert("lanyard_session".into(), bad.clone());
        let r = t.get("/account").await;
        assert_eq!(r.status, 303, "{bad:?}");
        assert_eq!(r.location(), Some("/login?return_to=/account"));
    }
}

#[tokio::test]
async fn forms_without_a_valid_csrf_token_or_from_another_origin_are_refused() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    server.add_user("ada", PW).await;

    let mut b = Browser::new(&server);
    let login = b.get("/login").await;
    let csrf = login.csrf();
    let creds = [("username", "ada"), ("password", PW)];
    let r = b
        .post("/login", &[("csrf", "forged"), creds[0], creds[1]])
        .await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("This form has expired"));
    let r = b.post("/login", &creds).await;
    assert_eq!(r.status, 400, "missing token: a clear page, not a crash");
    let r = b
        .post_with(
            "/login",
            &[("csrf", &csrf), creds[0], creds[1]],
            ("origin", "https://evil.example"),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = b
        .post_with(
            "/login",
            &[("csrf", &csrf), creds[0], creds[1]],
            ("sec-fetch-site", "cross-site"),
        )
        .await;
    assert_eq!(r.status, 403);
    // Another browser's valid token does not work with this browser's cookie.
    let mut other = Browser::new(&server);
    let theirs = other.get("/login").await.csrf();
    assert_eq!(
        b.post("/login", &[("csrf", &theirs), creds[0], creds[1]])
            .await
            .status,
        403
    );
    assert!(b.session_cookie().is_none());

    let r = b
        .post_with(
            "/login",
            &[("csrf", &csrf), creds[0], creds[1]],
            ("origin", "http://localhost:8080"),
        )
        .await;
    assert_eq!(r.status, 303, "the issuer's own origin is fine");
    let mut again = Browser::new(&server);
    let csrf = again.get("/login").await.csrf();
    let form = [("csrf", csrf.as_str()), creds[0], creds[1]];
    assert_eq!(
        again
            .post_with("/login", &form, ("origin", "null"))
            .await
            .status,
        303,
        "what no-referrer pages send"
    );
    let account = b.get("/account").await;
    let token = account.csrf();
    assert_eq!(b.post("/logout", &[("csrf", "nope")]).await.status, 403);
    assert_eq!(
        b.post("/account/sessions/end-others", &[]).await.status,
        400
    );
    assert_eq!(b.get("/account").await.status, 200, "still signed in");
    let r = b.post("/logout", &[("csrf", &token)]).await;
    assert_eq!(r.status, 303);
    assert!(b.session_cookie().is_none());
    assert_eq!(
        server.sessions(None).await.unwrap().len(),
        1,
        "only the other browser's"
    );
}

#[tokio::test]
async fn return_to_never_leaves_lanyard_and_big_bodies_are_refused() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    server.add_user("ada", PW).await;
    for (target, expected) in [
        ("https://evil.example/", "/account"),
        ("//evil.example/x", "/account"),
        ("/\\evil.example", "/account"),
        ("/account?tab=sessions", "/account?tab=sessions"),
    ] {
        let mut b = Browser::new(&server);
        let login = b.get("/login").await;
        let r = b
            .post(
                "/login",
                &[
                    ("csrf", &login.csrf()),
                    ("username", "ada"),
                    ("password", PW),
                    ("return_to", target),
                ],
            )
            .await;
        assert_eq!(r.location(), Some(expected), "{target}");
    }
    let mut b = Browser::new(&server);
    let csrf = b.get("/login").await.csrf();
    let huge = "a".repeat(200 * 1024);
    let r = b
        .post(
            "/login",
            &[("csrf", &csrf), ("username", "ada"), ("password", &huge)],
        )
        .await;
    assert_eq!(r.status, 413);
}

#[tokio::test]
async fn sessions_expire_when_idle_and_after_their_lifetime() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |c| {
        c.session.idle_timeout = std::time::Duration::from_secs(30 * 60);
        c.session.lifetime = std::time::Duration::from_secs(2 * 3600);
    })
    .await;
    server.add_user("ada", PW).await;

    let mut idle = Browser::new(&server);
    idle.sign_in("ada", PW).await;
    server.advance(29 * 60);
    assert_eq!(
        idle.get("/account").await.status,
        200,
        "29 minutes idle is fine"
    );
    server.advance(29 * 60);
    assert_eq!(
        idle.get("/account").await.status,
        200,
        "and it was refreshed"
    );
    server.advance(30 * 60);
    assert_eq!(
        idle.get("/account").await.status,
        303,
        "30 minutes idle ends it"
    );
    assert!(
        audit_kinds(&server)
            .await
            .iter()
            .any(|k| k.ends_with("reason=idle_timeout"))
    );

    let mut busy = Browser::new(&server);
    busy.sign_in("ada", PW).await;
    for _ in 0..5 {
        server.advance(20 * 60);
        assert_eq!(busy.get("/account").await.status, 200);
    }
    server.advance(20 * 60);
    assert_eq!(
        busy.get("/account").await.status,
        303,
        "2 hours after sign-in, however busy"
    );
    assert!(
        audit_kinds(&server)
            .await
            .iter()
            .any(|k| k.ends_with("reason=lifetime_exceeded"))
    );
}

#[tokio::test]
async fn last_seen_is_written_at_most_once_a_minute_and_the_sweeper_ends_stale_sessions() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    server.add_user("ada", PW).await;
    let mut b = Browser::new(&server);
    b.sign_in("ada", PW).await;
    let seen = || async {
        server.sessions(None).await.unwrap()[0]
            .last_seen_at
            .as_secs()
    };
    let start = seen().await;
    server.advance(30);
    b.get("/account").await;
    assert_eq!(seen().await, start, "no write within a minute");
    server.advance(40);
    b.get("/account").await;
    assert_eq!(seen().await, start + 70);

    let mut other = Browser::new(&server);
    other.sign_in("ada", PW).await;
    server.advance(31 * 60);
    lanyard_server::sweep(&server.state).await;
    assert!(server.sessions(None).await.unwrap().is_empty());
    assert_eq!(b.get("/account").await.status, 303);
}

#[tokio::test]
async fn the_oldest_session_ends_past_the_cap_and_the_user_is_told_once() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |c| c.session.max_per_user = 2).await;
    server.add_user("ada", PW).await;
    let mut first = Browser::new(&server);
    first.sign_in("ada", PW).await;
    server.advance(5);
    let mut second = Browser::new(&server);
    second.sign_in("ada", PW).await;
    server.advance(5);
    let mut third = Browser::new(&server);
    third.sign_in("ada", PW).await;

    assert_eq!(
        first.get("/account").await.status,
        303,
        "the oldest was ended"
    );
    assert_eq!(second.get("/account").await.status, 200);
    let page = third.get("/account").await;
    assert!(page.body.contains("oldest one was signed out"));
    assert!(
        !third
            .get("/account")
            .await
            .body
            .contains("oldest one was signed out"),
        "told once"
    );
    assert_eq!(server.sessions(None).await.unwrap().len(), 2);
    assert!(
        audit_kinds(&server)
            .await
            .iter()
            .any(|k| k.ends_with("reason=evicted"))
    );
}

#[tokio::test]
async fn a_password_change_ends_every_other_session_but_this_one() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    server.add_user("ada", PW).await;
    let mut here = Browser::new(&server);
    here.sign_in("ada", PW).await;
    let mut there = Browser::new(&server);
    there.sign_in("ada", PW).await;

    let csrf = here.get("/account").await.csrf();
    let r = here
        .post(
            "/account/password",
            &[
                ("csrf", &csrf),
                ("current", "wrong"),
                ("new", "a brand new passphrase"),
            ],
        )
        .await;
    assert_eq!(r.status, 401);
    let r = here
        .post(
            "/account/password",
            &[("csrf", &csrf), ("current", PW), ("new", "password123")],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("most common"));
    assert_eq!(
        there.get("/account").await.status,
        200,
        "refused changes end nothing"
    );

    let r = here
        .post(
            "/account/password",
            &[
                ("csrf", &csrf),
                ("current", PW),
                ("new", "a brand new passphrase"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("signed out everywhere else"));
    assert_eq!(here.get("/account").await.status, 200, "this session stays");
    assert_eq!(
        there.get("/account").await.status,
        303,
        "the other one ended"
    );
    assert!(
        audit_kinds(&server)
            .await
            .iter()
            .any(|k| k.ends_with("reason=password_changed"))
    );

    let mut fresh = Browser::new(&server);
    assert_eq!(fresh.sign_in("ada", PW).await.status, 401);
    assert_eq!(
        fresh.sign_in("ada", "a brand new passphrase").await.status,
        303
    );
}

#[tokio::test]
async fn users_end_their_own_sessions_and_never_anyone_elses() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    let ada = server.add_user("ada", PW).await;
    let bob = server.add_user("bob", PW).await;
    let mut ada_laptop = Browser::new(&server);
    ada_laptop.sign_in("ada", PW).await;
    let mut ada_phone = Browser::new(&server);
    ada_phone.sign_in("ada", PW).await;
    let mut ada_tablet = Browser::new(&server);
    ada_tablet.sign_in("ada", PW).await;
    let mut bob_b = Browser::new(&server);
    bob_b.sign_in("bob", PW).await;
    let bobs = server.sessions(Some(&bob)).await.unwrap()[0]
        .public_id
        .clone();

    let page = ada_laptop.get("/account").await;
    assert_eq!(
        page.body.matches("class=\"device\"").count(),
        3,
        "ada sees her three sessions only"
    );
    assert!(!page.body.contains(&bobs));
    let csrf = page.csrf();
    let r = ada_laptop
        .post(
            "/account/sessions/end",
            &[("csrf", &csrf), ("session", &bobs)],
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        bob_b.get("/account").await.status,
        200,
        "bob's session survives"
    );

    let phone_digest = digest(&ada_phone.session_cookie().unwrap());
    let phone_id = server
        .store
        .session_by_digest(&phone_digest)
        .await
        .unwrap()
        .unwrap()
        .public_id;
    assert_eq!(server.sessions(Some(&ada)).await.unwrap().len(), 3);
    let r = ada_laptop
        .post(
            "/account/sessions/end",
            &[("csrf", &csrf), ("session", &phone_id)],
        )
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(ada_phone.get("/account").await.status, 303);
    assert_eq!(ada_tablet.get("/account").await.status, 200);

    let r = ada_laptop
        .post("/account/sessions/end-others", &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(ada_tablet.get("/account").await.status, 303);
    assert_eq!(ada_laptop.get("/account").await.status, 200);
    assert_eq!(bob_b.get("/account").await.status, 200);
}

#[tokio::test]
async fn throttling_slows_guessing_refuses_even_the_right_password_and_ends() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    server.add_user("ada", PW).await;
    let mut attacker = Browser::from_ip(&server, "127.0.0.1");
    for _ in 0..5 {
        assert_eq!(attacker.sign_in("ada", "guess").await.status, 401);
    }
    let r = attacker.sign_in("ada", "guess").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "15");
    let r = attacker.sign_in("ada", PW).await;
    assert_eq!(
        r.status, 429,
        "the right password during a penalty is refused too"
    );
    assert!(attacker.session_cookie().is_none());

    // The owner on another network is not held back.
    let mut owner = Browser::from_ip(&server, "127.0.0.2");
    assert_eq!(owner.sign_in("ada", PW).await.status, 303);

    // The penalty grows with each failure, then expires.
    server.advance(15);
    assert_eq!(attacker.sign_in("ada", "guess").await.status, 401);
    let r = attacker.sign_in("ada", "guess").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "30");
    server.advance(30);
    assert_eq!(attacker.sign_in("ada", PW).await.status, 303);
    assert!(
        audit_kinds(&server)
            .await
            .iter()
            .any(|k| k.starts_with("signin.throttled account=\"ada\""))
    );
}

#[tokio::test]
async fn a_session_bound_to_an_address_ends_when_used_from_another() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |c| {
        c.session.bind_ip = lanyard_core::session::BindIp::Exact
    })
    .await;
    server.add_user("ada", PW).await;
    let mut b = Browser::from_ip(&server, "127.0.0.1");
    b.sign_in("ada", PW).await;
    assert_eq!(b.get("/account").await.status, 200);
    let mut thief = Browser::from_ip(&server, "127.0.0.9");
    thief.cookies = b.cookies.clone();
    assert_eq!(thief.get("/account").await.status, 303);
    assert_eq!(
        b.get("/account").await.status,
        303,
        "the stolen session is gone for everyone"
    );
    assert!(
        audit_kinds(&server)
            .await
            .iter()
            .any(|k| k.ends_with("reason=ip_mismatch"))
    );
}

#[tokio::test]
async fn the_command_line_lists_and_ends_sessions_and_disabling_ends_them_all() {
    use crate::harness::{lanyard, run, stderr, stdout};
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    server.add_user("ada", PW).await;
    server.add_user("bob", PW).await;
    let mut a1 = Browser::new(&server);
    a1.sign_in("ada", PW).await;
    let mut a2 = Browser::new(&server);
    a2.sign_in("ada", PW).await;
    let mut b1 = Browser::new(&server);
    b1.sign_in("bob", PW).await;

    let out = run(
        lanyard(&db).args(["session", "list", "--user", "ada", "--json"]),
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let text = stdout(&run(lanyard(&db).args(["session", "list"]), ""));
    assert_eq!(text.lines().count(), 4, "header and three sessions: {text}");
    for cookie in [a1.session_cookie().unwrap(), b1.session_cookie().unwrap()] {
        assert!(
            !text.contains(&cookie),
            "listings never show session secrets"
        );
    }

    let a1_id = server
        .store
        .session_by_digest(&digest(&a1.session_cookie().unwrap()))
        .await
        .unwrap()
        .unwrap()
        .public_id;
    let out = run(lanyard(&db).args(["session", "revoke", &a1_id]), "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(a1.get("/account").await.status, 303);
    assert_eq!(a2.get("/account").await.status, 200);
    let out = run(lanyard(&db).args(["session", "revoke", &a1_id]), "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no active session"));
    assert_eq!(
        run(lanyard(&db).args(["session", "revoke"]), "")
            .status
            .code(),
        Some(2)
    );

    let out = run(
        lanyard(&db).args(["session", "revoke", "--user", "bob"]),
        "",
    );
    assert!(stdout(&out).contains("Ended 1 session"), "{}", stdout(&out));
    assert_eq!(b1.get("/account").await.status, 303);

    let out = run(lanyard(&db).args(["user", "disable", "ada"]), "");
    assert!(out.status.success());
    assert_eq!(
        a2.get("/account").await.status,
        303,
        "disabling ends every session"
    );
    assert!(server.sessions(None).await.unwrap().is_empty());
    assert_eq!(Browser::new(&server).sign_in("ada", PW).await.status, 401);

    let out = run(
        lanyard(&db).args(["user", "set-password", "bob", "--password-stdin"]),
        "password123\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("most common"), "{}", stderr(&out));
}

#[tokio::test]
async fn hashes_under_old_parameters_are_upgraded_at_sign_in() {
    use lanyard_core::password::{PasswordHasher, PasswordPolicy};
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    let id = server.add_user("ada", PW).await;
    let old_policy = PasswordPolicy {
        memory_kib: 32,
        iterations: 1,
        ..Default::default()
    };
    let old = PasswordHasher::new(old_policy)
        .unwrap()
        .hash(&secrecy::SecretString::from(PW.to_owned()))
        .unwrap();
    let e = lanyard_core::audit::NewAuditEvent::new(
        server.clock.now(),
        lanyard_core::audit::AuditKind::PasswordChanged,
    );
    server
        .store
        .set_password_hash(&id, &old, None, &e)
        .await
        .unwrap();

    assert_eq!(
        Browser::new(&server).sign_in("ada", PW).await.status,
        303,
        "the old hash verifies"
    );
    let now = server
        .store
        .user_by_id(&id)
        .await
        .unwrap()
        .unwrap()
        .password_hash;
    assert_ne!(now, old);
    assert!(now.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{now}");
    assert_eq!(Browser::new(&server).sign_in("ada", PW).await.status, 303);
}

#[tokio::test]
async fn one_address_guessing_across_many_accounts_is_throttled() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |c| {
        c.throttle.per_ip = lanyard_core::throttle::Limit {
            max: 6,
            window: std::time::Duration::from_secs(300),
        };
    })
    .await;
    server.add_user("ada", PW).await;
    let mut sprayer = Browser::from_ip(&server, "127.0.0.3");
    for i in 0..6 {
        assert_eq!(
            sprayer
                .sign_in(&format!("user{i}"), "Winter2026!")
                .await
                .status,
            401
        );
    }
    let r = sprayer.sign_in("ada", PW).await;
    assert_eq!(
        r.status, 429,
        "the address is throttled, whichever account it tries"
    );
    assert_eq!(
        Browser::from_ip(&server, "127.0.0.4")
            .sign_in("ada", PW)
            .await
            .status,
        303
    );
}

#[tokio::test]
async fn a_burst_of_parallel_guesses_gets_no_more_tries_than_the_limit() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    server.add_user("ada", PW).await;
    let mut ready = Vec::new();
    for _ in 0..20 {
        let mut b = Browser::from_ip(&server, "127.0.0.5");
        let csrf = b.get("/login").await.csrf();
        ready.push((b, csrf));
    }
    let mut burst = tokio::task::JoinSet::new();
    for (mut b, csrf) in ready {
        burst.spawn(async move {
            b.post(
                "/login",
                &[("csrf", &csrf), ("username", "ada"), ("password", "guess")],
            )
            .await
            .status
        });
    }
    let statuses = burst.join_all().await;
    let tried = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(tried + refused, 20, "{statuses:?}");
    assert!(tried <= 5, "{tried} guesses were checked: {statuses:?}");
}

#[tokio::test]
async fn session_check_says_only_whether_the_session_lives() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    server.add_user("ada", PW).await;
    let mut b = Browser::new(&server);
    assert_eq!(b.get("/session/check").await.status, 401);
    b.sign_in("ada", PW).await;
    let live = b.get("/session/check").await;
    assert_eq!(
        (live.status, live.body.as_str()),
        (204, ""),
        "nothing about whom"
    );
    b.set_cookie("lanyard_session", "forged");
    assert_eq!(b.get("/session/check").await.status, 401);
}

/// Many sign-ins at once: each one a session, none a server error (SQLite's write lock is
/// taken at the start of each write transaction, so none fails to upgrade a read).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sign_ins_all_succeed() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |_| {}).await;
    let mut tasks = tokio::task::JoinSet::new();
    // Different people on different addresses: throttling, which counts attempts in flight,
    // has nothing to say.
    for i in 0..24 {
        let name = format!("user{i}");
        server.add_user(&name, PW).await;
        let mut b = Browser::from_ip(&server, &format!("127.0.1.{}", i + 1));
        tasks.spawn(async move { b.sign_in(&name, PW).await.status });
    }
    let statuses: Vec<u16> = tasks.join_all().await;
    assert!(statuses.iter().all(|s| *s == 303), "{statuses:?}");
    assert_eq!(server.sessions(None).await.unwrap().len(), 24);
}
