//! Lanyard behind a real reverse proxy: Debian's nginx, terminating TLS with a throwaway
//! certificate and forwarding to Lanyard over plain HTTP, as operators run it.
//!
//! These run when nginx is installed (`.ci/run` installs `nginx-light` and sets
//! `LANYARD_TEST_REQUIRE_NGINX=1`, which turns its absence into a failure).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{Browser, TestDb, TestServer, lanyard, run, stdout};

const NGINX: &str = "/usr/sbin/nginx";
const PW: &str = "correct horse battery";

fn available() -> bool {
    let ok = Path::new(NGINX).exists();
    if !ok {
        assert!(
            std::env::var("LANYARD_TEST_REQUIRE_NGINX").is_err(),
            "LANYARD_TEST_REQUIRE_NGINX is set but {NGINX} is missing"
        );
        eprintln!("skipped: install nginx-light to run the reverse proxy tests");
    }
    ok
}

struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn free_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// nginx on `port`, TLS-terminating, in front of `upstream` (`http://127.0.0.1:N`).
async fn nginx(port: u16, upstream: &str) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args([
            "-keyout",
            &format!("{d}/key.pem"),
            "-out",
            &format!("{d}/cert.pem"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success(), "openssl made no certificate");
    // The settings of deploy/nginx.conf that matter here, with paths of this test's own.
    let conf = format!(
        "daemon off;\n\
         worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n\
           access_log off;\n\
           client_body_temp_path {d}/body;\n\
           proxy_temp_path {d}/proxy;\n\
           server {{\n\
             listen 127.0.0.1:{port} ssl;\n\
             ssl_certificate {d}/cert.pem;\n\
             ssl_certificate_key {d}/key.pem;\n\
             location / {{\n\
               proxy_pass {upstream};\n\
               proxy_set_header Host $http_host;\n\
               proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
               proxy_set_header X-Forwarded-Proto $scheme;\n\
             }}\n\
           }}\n\
         }}\n"
    );
    let conf_path = format!("{d}/nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(NGINX)
        .args(["-p", &d, "-e", &format!("{d}/error.log"), "-c", &conf_path])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let nginx = Nginx {
        child,
        port,
        _dir: dir,
    };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return nginx;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let log = std::fs::read_to_string(format!("{d}/error.log")).unwrap_or_default();
    panic!("nginx did not start: {log}");
}

/// A client of the proxy, connecting from `ip` (any 127/8 address works on Linux).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .danger_accept_invalid_certs(true)
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

fn set_cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn behind_nginx_the_public_issuer_and_the_forwarded_client_are_what_count() {
    if !available() {
        return;
    }
    let db = TestDb::new().await;
    let port = free_port().await;
    let public = format!("https://localhost:{port}");
    let server = TestServer::start(&db, |c| {
        c.issuer = public.clone().try_into().unwrap();
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let ada = server.add_user("ada", PW).await;
    let proxy = nginx(port, &server.base).await;
    let base = format!("https://localhost:{}", proxy.port);
    let http = client_from("127.0.0.5");

    // Discovery names the public https issuer, whatever Host reached Lanyard.
    let r = http
        .get(format!("{base}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["strict-transport-security"]
            .to_str()
            .unwrap()
            .starts_with("max-age=")
    );
    let meta: serde_json::Value = r.json().await.unwrap();
    assert_eq!(meta["issuer"], public.as_str());
    assert_eq!(meta["token_endpoint"], format!("{public}/token"));

    // What Lanyard sees: the client nginx forwarded, not the address the client made up.
    let seen: serde_json::Value = http
        .get(format!("{base}/_lanyard/request"))
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["client_ip"], "127.0.0.5", "{seen}");
    assert_eq!(seen["peer"], "127.0.0.1");
    assert_eq!(seen["peer_trusted"], true);
    assert_eq!(seen["scheme"], "https");
    assert_eq!(seen["host"], format!("localhost:{port}"));

    // A failed sign-in through the proxy: Secure __Host- cookies, and the audit log has the
    // forwarded client.
    let page = http.get(format!("{base}/login")).send().await.unwrap();
    let cookies = set_cookies(&page);
    assert!(!cookies.is_empty());
    for c in &cookies {
        assert!(c.starts_with("__Host-") && c.contains("Secure"), "{c}");
    }
    let cookie = cookies[0].split(';').next().unwrap().to_owned();
    let csrf = crate::harness::field(&page.text().await.unwrap(), "csrf").unwrap();
    let r = http
        .post(format!("{base}/login"))
        .header("cookie", cookie)
        .header("x-forwarded-for", "6.6.6.6")
        .form(&[
            ("csrf", csrf.as_str()),
            ("username", "ada"),
            ("password", "wrong"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let events = server.store.list_audit(Some(&ada), 10).await.unwrap();
    let failed = events.iter().find(|e| e.kind == "signin.failed").unwrap();
    assert_eq!(failed.ip.as_deref(), Some("127.0.0.5"));
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, |c| {
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let ada = server.add_user("ada", PW).await;
    let seen: serde_json::Value = client_from("127.0.0.3")
        .get(format!("{}/_lanyard/request", server.base))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=6.6.6.6;proto=https;host=evil.example")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["client_ip"], "127.0.0.3", "{seen}");
    assert_eq!(seen["peer_trusted"], false);
    assert_eq!(seen["scheme"], "http");
    assert_ne!(seen["host"], "evil.example");

    let mut b = Browser::from_ip(&server, "127.0.0.3");
    let csrf = b.get("/login").await.csrf();
    let r = b
        .post_with(
            "/login",
            &[("csrf", &csrf), ("username", "ada"), ("password", "wrong")],
            ("x-forwarded-for", "6.6.6.6"),
        )
        .await;
    assert_eq!(r.status, 401);
    let events = server.store.list_audit(Some(&ada), 10).await.unwrap();
    let failed = events.iter().find(|e| e.kind == "signin.failed").unwrap();
    assert_eq!(failed.ip.as_deref(), Some("127.0.0.3"));
}

/// Runs `lanyard doctor` off the runtime, so the in-process server can answer it.
async fn doctor(cmd: &mut Command) -> std::process::Output {
    let mut cmd = std::mem::replace(cmd, Command::new("true"));
    tokio::task::spawn_blocking(move || run(&mut cmd, ""))
        .await
        .unwrap()
}

#[tokio::test]
async fn doctor_reports_what_lanyard_sees_and_the_usual_mistakes() {
    let db = TestDb::new().await;
    let server = TestServer::start_on_localhost(&db).await;
    let out = doctor(
        lanyard(&db)
            .args(["doctor", "--url", &server.base])
            .env("LANYARD_ISSUER", &server.base),
    )
    .await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("client IP:     127.0.0.1"), "{text}");
    assert!(text.contains("scheme:        http"), "{text}");
    assert!(text.contains("no problems found"), "{text}");

    // An https issuer reached over plain HTTP, with no proxy trusted.
    let out = doctor(
        lanyard(&db)
            .args(["doctor", "--url", &server.base])
            .env("LANYARD_ISSUER", "https://id.example.org")
            .env("LANYARD_LISTEN", "0.0.0.0:8080"),
    )
    .await;
    let text = stdout(&out);
    assert!(!out.status.success());
    assert!(text.contains("trusted_proxies is empty"), "{text}");
    assert!(text.contains("X-Forwarded-Proto"), "{text}");
    assert!(text.contains("not in trusted_proxies"), "{text}");

    let out = doctor(
        lanyard(&db)
            .args(["doctor", "--url", &server.base])
            .env("LANYARD_TRUSTED_PROXIES", "[\"0.0.0.0/0\"]"),
    )
    .await;
    assert!(stdout(&out).contains("trusts every address"));
    let out = doctor(
        lanyard(&db)
            .args(["doctor"])
            .env("LANYARD_TRUSTED_PROXIES", "[\"not-an-ip\"]"),
    )
    .await;
    assert!(!out.status.success());
    assert!(crate::harness::stderr(&out).contains("not an address or CIDR"));
}
