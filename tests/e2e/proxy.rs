//! Lanyard behind a real reverse proxy: Debian's nginx, terminating TLS with a throwaway
//! certificate and forwarding to Lanyard over plain HTTP, as operators run it.
//!
//! Also two instances behind Caddy, run with `deploy/Caddyfile` as shipped.
//!
//! These run when nginx and Caddy are installed (`.ci/run` installs `nginx-light` and `caddy`
//! and sets `LANYARD_TEST_REQUIRE_PROXIES=1`, which turns their absence into a failure).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{Browser, TestDb, TestServer, lanyard, run, stdout};

const NGINX: &str = "/usr/sbin/nginx";
const CADDY: &str = "/usr/bin/caddy";
const PW: &str = "correct horse battery";

fn available(program: &str) -> bool {
    let ok = Path::new(program).exists();
    if !ok {
        assert!(
            std::env::var("LANYARD_TEST_REQUIRE_PROXIES").is_err(),
            "LANYARD_TEST_REQUIRE_PROXIES is set but {program} is missing"
        );
        eprintln!("skipped: install nginx-light and caddy to run the reverse proxy tests");
    }
    ok
}

/// A proxy process, stopped when dropped.
struct Proxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
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
async fn nginx(port: u16, upstream: &str) -> Proxy {
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
    let nginx = Proxy {
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
    if !available(NGINX) {
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

/// Caddy on `port` with `deploy/Caddyfile` as shipped, in front of `upstreams` (`host:port`).
async fn caddy(port: u16, upstreams: &[&str]) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let caddyfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/Caddyfile");
    let child = Command::new(CADDY)
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(caddyfile)
        .env("CADDY_ADMIN", "off")
        .env("CADDY_HTTP_PORT", free_port().await.to_string())
        .env("LANYARD_DOMAIN", format!("localhost:{port}"))
        .env("LANYARD_UPSTREAMS", upstreams.join(" "))
        // Its own CA and state, in this test's directory.
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let caddy = Proxy {
        child,
        port,
        _dir: dir,
    };
    let http = client_from("127.0.0.6");
    for _ in 0..200 {
        if let Ok(r) = http
            .get(format!("https://localhost:{port}/readyz"))
            .send()
            .await
            && r.status() == 200
        {
            return caddy;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("Caddy did not start serving https on {port}");
}

/// The Compose set-up without containers: two instances on one database behind Caddy.
#[tokio::test]
async fn two_instances_behind_caddy_share_one_sign_in() {
    if !available(CADDY) {
        return;
    }
    let db = TestDb::new().await;
    let port = free_port().await;
    let public = format!("https://localhost:{port}");
    let configure = |c: &mut lanyard_server::Config| {
        c.issuer = public.clone().try_into().unwrap();
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    };
    let a = TestServer::start(&db, configure).await;
    let b = TestServer::start(&db, configure).await;
    a.add_user("ada", PW).await;
    let hosts: Vec<String> = [&a, &b]
        .iter()
        .map(|s| s.base.trim_start_matches("http://").to_owned())
        .collect();
    let proxy = caddy(port, &[&hosts[0], &hosts[1]]).await;
    let base = format!("https://localhost:{}", proxy.port);
    let http = client_from("127.0.0.6");

    let meta: serde_json::Value = http
        .get(format!("{base}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["issuer"], public.as_str());
    let seen: serde_json::Value = http
        .get(format!("{base}/_lanyard/request"))
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["client_ip"], "127.0.0.6", "{seen}");
    assert_eq!(seen["scheme"], "https");
    assert_eq!(seen["peer_trusted"], true);

    // Sign in through the proxy, then use the session on whichever instance Caddy picks.
    let page = http.get(format!("{base}/login")).send().await.unwrap();
    let pre = set_cookies(&page)[0].split(';').next().unwrap().to_owned();
    let csrf = crate::harness::field(&page.text().await.unwrap(), "csrf").unwrap();
    let r = http
        .post(format!("{base}/login"))
        .header("cookie", &pre)
        .form(&[
            ("csrf", csrf.as_str()),
            ("username", "ada"),
            ("password", PW),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let session = set_cookies(&r)
        .into_iter()
        .find(|c| c.starts_with("__Host-lanyard_session="))
        .unwrap();
    let session = session.split(';').next().unwrap().to_owned();
    for _ in 0..4 {
        let r = http
            .get(format!("{base}/account"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for (name, server) in [("A", &a), ("B", &b)] {
        let text = server.state.metrics.render(&*server.store).await.unwrap();
        assert!(
            text.contains("route=\"/account\",status=\"200\""),
            "instance {name} served some of them"
        );
    }
    let events = a.store.list_audit(None, 20).await.unwrap();
    let started = events.iter().find(|e| e.kind == "session.started").unwrap();
    assert_eq!(started.ip.as_deref(), Some("127.0.0.6"));
}
