//! The server over real HTTP: in-process on port 0, and the `lanyard serve` binary.

use std::time::Duration;

use crate::harness::{TestDb, TestServer, lanyard};

async fn spawn(db: &TestDb) -> (String, TestServer) {
    let server = TestServer::start(db, |_| {}).await;
    (server.base.clone(), server)
}

#[tokio::test]
async fn health_readiness_and_request_ids() {
    let db = TestDb::new().await;
    let (base, _stop) = spawn(&db).await;
    let http = reqwest::Client::new();

    let r = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_ne!(
        r.headers()["x-request-id"].to_str().unwrap(),
        id,
        "a new ID per request"
    );
    assert_eq!(r.text().await.unwrap(), "ready\n");

    let r = http
        .get(format!("{base}/healthz"))
        .header("x-request-id", "from-the-proxy")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "from-the-proxy");

    let r = http.get(format!("{base}/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let db = TestDb::new().await;
    let (base, _stop) = spawn(&db).await;
    let r = reqwest::Client::new()
        .post(format!("{base}/healthz"))
        .body(vec![b'a'; 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(
        r.headers().contains_key("content-security-policy"),
        "early answers carry the headers"
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
}

/// `lanyard serve` with no configuration at all (SQLite) or only the test's PostgreSQL URL:
/// it answers `/readyz`, and SIGTERM stops it cleanly.
#[tokio::test]
async fn serve_binary_starts_with_zero_config_and_stops_on_sigterm() {
    let db = TestDb::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = lanyard(&db);
    cmd.env_remove("LANYARD_PASSWORD__MEMORY_KIB")
        .env_remove("LANYARD_PASSWORD__ITERATIONS");
    if !db.is_postgres() {
        cmd.env_remove("LANYARD_DATABASE_URL");
    }
    let child = cmd
        .arg("serve")
        .env("LANYARD_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/readyz");
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(r) = http.get(&url).send().await {
            assert_eq!(r.status(), 200);
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "lanyard serve did not answer /readyz");
    if !db.is_postgres() {
        assert!(
            db.dir.path().join("lanyard.db").exists(),
            "the default database is created"
        );
    }

    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("listening") && log.contains("shutting down"),
        "{log}"
    );
}
