//! `/metrics`: parsed as Prometheus text, and its series move with what happens.

use lanyard_core::client::{ClientRegistration, GrantType};
use prometheus_parse::{Scrape, Value};

use crate::harness::{Browser, TestDb, TestServer, register_client};
use crate::logout::{receiver, signed_in_app};

const PW: &str = "correct horse battery";

async fn scrape(url: &str) -> Scrape {
    let r = reqwest::get(url).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4",
        "the Prometheus text format"
    );
    let text = r.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the series `name` whose labels include `labels`; 0 when it has none yet.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => f64::NAN,
        })
        .sum()
}

#[tokio::test]
async fn metrics_parse_and_move_with_what_happens() {
    let db = TestDb::new().await;
    let server = TestServer::start_on_localhost(&db).await;
    server.add_user("ada", PW).await;
    let url = format!("{}/metrics", server.base);
    let before = scrape(&url).await;
    assert_eq!(value(&before, "lanyard_sessions_active", &[]), 0.0);
    assert_eq!(value(&before, "lanyard_db_pool_max_connections", &[]), 8.0);

    // Sign-ins: failures, throttling, a success.
    let mut guesser = Browser::from_ip(&server, "127.0.0.7");
    for _ in 0..5 {
        assert_eq!(guesser.sign_in("ada", "guess").await.status, 401);
    }
    assert_eq!(guesser.sign_in("ada", "guess").await.status, 429);
    let app = receiver(0).await;
    let (mut browser, _) = signed_in_app(&server, &app.url).await;

    // A token by client credentials.
    let reg = ClientRegistration {
        name: "Robot".into(),
        grant_types: vec![GrantType::ClientCredentials],
        ..Default::default()
    };
    let (id, secret) = register_client(&server.store, reg).await;
    let r = reqwest::Client::new()
        .post(format!("{}/token", server.base))
        .basic_auth(&id, secret.as_deref())
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let during = scrape(&url).await;
    assert_eq!(value(&during, "lanyard_sessions_active", &[]), 1.0);
    let signins = |s: &Scrape, result, method| {
        value(
            s,
            "lanyard_signins_total",
            &[("result", result), ("method", method)],
        )
    };
    assert_eq!(signins(&during, "failed", "pwd"), 5.0);
    assert_eq!(signins(&during, "succeeded", "pwd"), 1.0);
    assert_eq!(value(&during, "lanyard_signin_throttled_total", &[]), 1.0);
    assert_eq!(
        value(
            &during,
            "lanyard_tokens_issued_total",
            &[("grant", "client_credentials")]
        ),
        1.0
    );
    assert!(
        value(
            &during,
            "lanyard_http_request_duration_seconds",
            &[("route", "/login"), ("method", "POST"), ("status", "401")]
        ) >= 5.0,
        "requests are timed by route"
    );
    assert!(value(&during, "lanyard_db_pool_connections", &[("state", "idle")]) >= 0.0);

    // Sign-out ends the session and queues its logout; delivering it counts too.
    let csrf = browser.get("/account").await.csrf();
    browser.post("/logout", &[("csrf", &csrf)]).await;
    let queued = scrape(&url).await;
    assert_eq!(
        value(
            &queued,
            "lanyard_logout_deliveries",
            &[("state", "pending")]
        ),
        1.0
    );
    lanyard_server::logout::deliver_due(&server.state, &lanyard_server::logout::http_client())
        .await;

    let after = scrape(&url).await;
    assert_eq!(value(&after, "lanyard_sessions_active", &[]), 0.0);
    assert_eq!(
        value(
            &after,
            "lanyard_sessions_ended_total",
            &[("reason", "signed_out")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "lanyard_logout_deliveries",
            &[("state", "delivered")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "lanyard_logout_delivery_attempts_total",
            &[("result", "delivered")]
        ),
        1.0
    );
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert!(
        !text.contains("127.0.0.7") && !text.contains("ada"),
        "no user or address"
    );
}

#[tokio::test]
async fn metrics_can_have_an_address_of_their_own() {
    let db = TestDb::new().await;
    let port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let server = TestServer::start(&db, |c| {
        c.metrics.listen = Some(([127, 0, 0, 1], port).into());
    })
    .await;
    let r = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "not on the public listener");
    let mut scraped = None;
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            scraped = Some(r.status());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(scraped, Some(reqwest::StatusCode::OK));
}
