//! Single sign-on and logout across two real relying apps: the demo app
//! (`crates/lanyard-demo-rp`, built on the `openidconnect` crate) running as "App A" and
//! "App B" on their own ports, each verifying back-channel logout tokens against Lanyard's JWKS.

use lanyard_core::Clock;
use lanyard_core::client::{ClientRegistration, IdTokenAlg};
use lanyard_core::jose::SigningKey;
use lanyard_demo_rp::{App, Settings};

use crate::harness::{Browser, Page, TestDb, TestServer, bind_again, register_client};

const PW: &str = "correct horse battery";
const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// How an app hears of sign-outs.
pub(crate) enum Channel {
    Back,
    Front,
}

/// A demo app serving on a port of its own; `stop` takes it off the network, keeping its state.
pub(crate) struct Demo {
    pub app: App,
    pub url: String,
    client_id: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Demo {
    pub async fn start(server: &TestServer, name: &str, channel: Channel) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://localhost:{}", listener.local_addr().unwrap().port());
        let reg = ClientRegistration {
            name: name.into(),
            redirect_uris: vec![format!("{url}/callback")],
            post_logout_redirect_uris: vec![format!("{url}/")],
            backchannel_logout_uri: matches!(channel, Channel::Back)
                .then(|| format!("{url}/backchannel_logout")),
            frontchannel_logout_uri: matches!(channel, Channel::Front)
                .then(|| format!("{url}/frontchannel_logout")),
            skip_consent: true,
            ..Default::default()
        };
        let (client_id, secret) = register_client(&server.store, reg).await;
        let settings = Settings {
            issuer: server.base.clone(),
            client_id: client_id.clone(),
            client_secret: secret,
            public_url: url.parse().unwrap(),
            name: name.into(),
        };
        let app = App::new(settings).await.unwrap();
        let mut demo = Demo {
            app,
            url,
            client_id,
            stop: None,
        };
        demo.serve(listener);
        demo
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let router = self.app.router();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
        });
        self.stop = Some(tx);
    }

    fn take_down(&mut self) {
        self.stop = None;
    }

    async fn bring_back(&mut self) {
        let port = url::Url::parse(&self.url).unwrap().port().unwrap();
        let listener = bind_again(port).await;
        self.serve(listener);
    }

    async fn home(&self, b: &mut Browser) -> Page {
        b.open(&format!("{}/", self.url)).await
    }

    /// Signs in at this app, with a password if Lanyard asks for one.
    async fn sign_in(&self, b: &mut Browser, password: Option<&str>) -> Page {
        let back = b
            .authorize(
                &format!("{}/login", self.url),
                password.map(|p| ("ada", p)),
                None,
            )
            .await
            .unwrap_or_else(|p| panic!("Lanyard did not send the browser back: {}", p.body));
        assert!(
            back.as_str()
                .starts_with(&format!("{}/callback?", self.url))
        );
        let r = b.open(back.as_str()).await;
        assert_eq!(r.status, 303, "{}", r.body);
        self.home(b).await
    }

    /// Presses the app's "Sign out", following it through Lanyard's end-session endpoint.
    async fn sign_out(&self, b: &mut Browser) -> Page {
        let r = b.post_to(&format!("{}/logout", self.url), &[]).await;
        let to_lanyard = r.location().unwrap().to_owned();
        assert!(to_lanyard.contains("/end_session?"), "{to_lanyard}");
        assert!(to_lanyard.contains("id_token_hint="));
        let r = b.open(&to_lanyard).await;
        assert_eq!(r.status, 303, "the hint proves who asks: {}", r.body);
        let back = r.location().unwrap().to_owned();
        assert!(back.starts_with(&format!("{}/?state=", self.url)), "{back}");
        b.open(&back).await
    }
}

fn signed_in(page: &Page) -> bool {
    page.body.contains("Signed in as")
}

async fn deliver(server: &TestServer) {
    lanyard_server::logout::deliver_due(&server.state, &lanyard_server::logout::http_client())
        .await;
}

#[tokio::test]
async fn one_sign_in_serves_both_apps_and_one_sign_out_ends_both() {
    let db = TestDb::new().await;
    let server = TestServer::start_on_localhost(&db).await;
    server.add_user("ada", PW).await;
    let a = Demo::start(&server, "App A", Channel::Back).await;
    let b_app = Demo::start(&server, "App B", Channel::Back).await;
    let mut browser = Browser::new(&server);

    assert!(!signed_in(&a.home(&mut browser).await));
    let at_a = a.sign_in(&mut browser, Some(PW)).await;
    assert!(signed_in(&at_a), "{}", at_a.body);
    let at_b = b_app.sign_in(&mut browser, None).await;
    assert!(signed_in(&at_b), "B signs in without a password");
    let sid = server.sid_of(&browser).await;
    assert_eq!(a.app.signed_in_sids(), vec![sid.clone()], "ID token sid");
    assert_eq!(b_app.app.signed_in_sids(), vec![sid.clone()], "one session");

    let after = b_app.sign_out(&mut browser).await;
    assert!(!signed_in(&after));
    assert!(browser.session_cookie().is_none(), "signed out of Lanyard");
    assert!(
        signed_in(&a.home(&mut browser).await),
        "until A hears of it"
    );
    deliver(&server).await;
    assert!(!signed_in(&a.home(&mut browser).await), "A signed out too");
    assert!(a.app.signed_in_sids().is_empty());

    let deliveries = server.store.logout_deliveries(10).await.unwrap();
    let mut states: Vec<_> = deliveries
        .iter()
        .map(|d| (d.client_id.as_str(), d.state.as_str()))
        .collect();
    states.sort();
    let mut expected = vec![
        (a.client_id.as_str(), "delivered"),
        (b_app.client_id.as_str(), "delivered"),
    ];
    expected.sort();
    assert_eq!(states, expected, "one token per app");
}

/// Logout tokens the demo app must refuse, and the one it must accept once.
#[tokio::test]
async fn the_app_accepts_only_logout_tokens_lanyard_signed_for_it() {
    let db = TestDb::new().await;
    let server = TestServer::start_on_localhost(&db).await;
    server.add_user("ada", PW).await;
    let a = Demo::start(&server, "App A", Channel::Back).await;
    let mut browser = Browser::new(&server);
    a.sign_in(&mut browser, Some(PW)).await;
    let sid = server.sid_of(&browser).await;

    let now = server.clock.now().as_secs();
    let good = serde_json::json!({
        "iss": server.base, "aud": a.client_id, "iat": now, "exp": now + 120,
        "jti": "jti-1", "sid": sid, "events": {EVENT: {}},
    });
    let keys = server.state.keys.current();
    let lanyard_key = keys.signer(IdTokenAlg::RS256).unwrap();
    let (stranger, _) = SigningKey::generate(IdTokenAlg::ES256, server.clock.now()).unwrap();
    let with = |k: &str, v: serde_json::Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let post = |token: String| {
        let url = format!("{}/backchannel_logout", a.url);
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .form(&[("logout_token", token)])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let refused = [
        (
            "another key",
            stranger.sign_jwt("logout+jwt", &good).unwrap(),
        ),
        ("an ID token", lanyard_key.sign_jwt("JWT", &good).unwrap()),
        (
            "another app",
            lanyard_key
                .sign_jwt("logout+jwt", &with("aud", "other".into()))
                .unwrap(),
        ),
        (
            "another issuer",
            lanyard_key
                .sign_jwt("logout+jwt", &with("iss", "http://evil".into()))
                .unwrap(),
        ),
        (
            "a nonce",
            lanyard_key
                .sign_jwt("logout+jwt", &with("nonce", "n".into()))
                .unwrap(),
        ),
        (
            "no event",
            lanyard_key
                .sign_jwt("logout+jwt", &with("events", serde_json::json!({})))
                .unwrap(),
        ),
        (
            "from the future",
            lanyard_key
                .sign_jwt("logout+jwt", &with("iat", (now + 3600).into()))
                .unwrap(),
        ),
        ("not a JWT", "abc.def".into()),
    ];
    for (what, token) in refused {
        let (status, body) = post(token).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert!(body.contains("invalid_request"), "{what}: {body}");
        assert_eq!(
            a.app.signed_in_sids(),
            vec![sid.clone()],
            "{what} ended nothing"
        );
    }
    let token = lanyard_key.sign_jwt("logout+jwt", &good).unwrap();
    assert_eq!(post(token.clone()).await.0, 200);
    assert!(a.app.signed_in_sids().is_empty());
    assert_eq!(post(token).await.0, 400, "a replay is refused");
}

#[tokio::test]
async fn an_app_that_was_down_hears_of_the_logout_after_lanyard_restarts() {
    let db = TestDb::new().await;
    let server = TestServer::start_on_localhost(&db).await;
    server.add_user("ada", PW).await;
    let a = Demo::start(&server, "App A", Channel::Back).await;
    let mut b_app = Demo::start(&server, "App B", Channel::Back).await;
    let mut browser = Browser::new(&server);
    a.sign_in(&mut browser, Some(PW)).await;
    b_app.sign_in(&mut browser, None).await;

    b_app.take_down();
    a.sign_out(&mut browser).await;
    deliver(&server).await;
    let deliveries = server.store.logout_deliveries(10).await.unwrap();
    let to_b = deliveries
        .iter()
        .find(|d| d.client_id == b_app.client_id)
        .unwrap();
    assert_eq!((to_b.state.as_str(), to_b.attempts), ("pending", 1));
    assert_eq!(b_app.app.signed_in_sids().len(), 1);

    let server = server.restart(&db).await;
    b_app.bring_back().await;
    server.advance(60);
    // The restarted worker may be the one to send it: wait for whichever does.
    for _ in 0..100 {
        deliver(&server).await;
        let all = server.store.logout_deliveries(10).await.unwrap();
        if all.iter().all(|d| d.state == "delivered") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        b_app.app.signed_in_sids().is_empty(),
        "delivered after all: {:?}",
        server.store.logout_deliveries(10).await.unwrap()
    );
    assert!(!signed_in(&b_app.home(&mut browser).await));
    let deliveries = server.store.logout_deliveries(10).await.unwrap();
    assert!(deliveries.iter().all(|d| d.state == "delivered"));
}

#[tokio::test]
async fn expiry_and_a_password_change_reach_the_apps_too() {
    let db = TestDb::new().await;
    let server = TestServer::start_on_localhost_with(&db, |c| {
        c.session.idle_timeout = std::time::Duration::from_secs(120);
    })
    .await;
    server.add_user("ada", PW).await;
    let a = Demo::start(&server, "App A", Channel::Back).await;

    // Idle expiry, found by the sweeper.
    let mut idle = Browser::new(&server);
    a.sign_in(&mut idle, Some(PW)).await;
    server.advance(121);
    lanyard_server::sweep(&server.state).await;
    deliver(&server).await;
    assert!(a.app.signed_in_sids().is_empty(), "idle expiry reached A");

    // A password changed in another browser ends this one's session, and A's.
    let mut here = Browser::new(&server);
    a.sign_in(&mut here, Some(PW)).await;
    let mut there = Browser::new(&server);
    there.sign_in("ada", PW).await;
    let r = there.change_password(PW, "a brand new passphrase").await;
    assert_eq!(r.status, 200);
    deliver(&server).await;
    assert!(
        a.app.signed_in_sids().is_empty(),
        "the password change reached A"
    );
    assert!(!signed_in(&a.home(&mut here).await));
}
