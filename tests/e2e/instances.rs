//! Two Lanyard instances on one database, as behind a load balancer: whatever one decides, the
//! other sees at once. Run with `LANYARD_TEST_DATABASE_URL` this is two instances on one
//! PostgreSQL; on SQLite, two processes' worth of pools on one file.

use crate::harness::{Browser, TestDb, TestServer};
use crate::logout::{receiver, signed_in_app};

const PW: &str = "correct horse battery";

async fn two(db: &TestDb) -> (TestServer, TestServer) {
    let a = TestServer::start(db, |_| {}).await;
    let b = TestServer::start(db, |_| {}).await;
    (a, b)
}

#[tokio::test]
async fn a_session_from_one_instance_works_and_ends_on_the_other() {
    let db = TestDb::new().await;
    let (a, b) = two(&db).await;
    a.add_user("ada", PW).await;
    let mut browser = Browser::new(&a);
    assert_eq!(browser.sign_in("ada", PW).await.status, 303);

    browser.point_at(&b);
    let page = browser.get("/account").await;
    assert_eq!(page.status, 200, "B knows the session A started");
    let csrf = page.csrf();
    let kept = browser.session_cookie().unwrap();
    assert_eq!(
        browser.post("/logout", &[("csrf", &csrf)]).await.status,
        303
    );

    // The cookie a thief kept is refused by A at once: no cache lets it live on.
    let mut thief = Browser::new(&a);
    thief.set_cookie("lanyard_session", &kept);
    let r = thief.get("/account").await;
    assert_eq!(r.status, 303, "A refuses the ended session");
    assert!(r.location().unwrap().starts_with("/login"));
}

#[tokio::test]
async fn throttling_counts_attempts_made_on_every_instance() {
    let db = TestDb::new().await;
    let (a, b) = two(&db).await;
    a.add_user("ada", PW).await;
    let mut on_a = Browser::new(&a);
    let mut on_b = Browser::new(&b);
    for _ in 0..3 {
        assert_eq!(on_a.sign_in("ada", "guess").await.status, 401);
    }
    for _ in 0..2 {
        assert_eq!(on_b.sign_in("ada", "guess").await.status, 401);
    }
    assert_eq!(
        on_a.sign_in("ada", PW).await.status,
        429,
        "five failures in all"
    );
    assert_eq!(on_b.sign_in("ada", PW).await.status, 429);
}

#[tokio::test]
async fn a_logout_is_sent_once_however_many_instances_deliver() {
    let db = TestDb::new().await;
    let (a, b) = two(&db).await;
    a.add_user("ada", PW).await;
    let app = receiver(0).await;
    let (mut browser, _) = signed_in_app(&a, &app.url).await;
    browser.point_at(&b);
    let csrf = browser.get("/account").await.csrf();
    browser.post("/logout", &[("csrf", &csrf)]).await;

    let http = lanyard_server::logout::http_client();
    let (n_a, n_b) = tokio::join!(
        lanyard_server::logout::deliver_due(&a.state, &http),
        lanyard_server::logout::deliver_due(&b.state, &http),
    );
    assert_eq!(n_a + n_b, 1, "one instance claimed it");
    // And again, after the lease: it was delivered, so nobody sends it twice.
    a.advance(120);
    b.advance(120);
    let (n_a, n_b) = tokio::join!(
        lanyard_server::logout::deliver_due(&a.state, &http),
        lanyard_server::logout::deliver_due(&b.state, &http),
    );
    assert_eq!(n_a + n_b, 0);
    assert_eq!(app.tokens.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn expiry_sweeps_on_every_instance_end_each_session_once() {
    let db = TestDb::new().await;
    let (a, b) = two(&db).await;
    a.add_user("ada", PW).await;
    let app = receiver(0).await;
    let mut ended = Vec::new();
    for _ in 0..3 {
        let (browser, _) = signed_in_app(&a, &app.url).await;
        ended.push(a.sid_of(&browser).await);
    }
    let idle = a.state.config.session.idle_timeout.as_secs() + 1;
    a.advance(idle);
    b.advance(idle);
    tokio::join!(
        lanyard_server::sweep(&a.state),
        lanyard_server::sweep(&b.state)
    );

    let deliveries = a.store.logout_deliveries(100).await.unwrap();
    let mut sids: Vec<_> = deliveries.iter().map(|d| d.session_id.clone()).collect();
    sids.sort();
    ended.sort();
    assert_eq!(sids, ended, "one logout per session, not one per instance");
    let shared = a.store.shared_metrics().await.unwrap();
    assert_eq!(shared.sessions, 0);
    assert_eq!(
        shared.sessions_ended,
        vec![("idle_timeout".to_owned(), 3)],
        "each end counted once"
    );
}
