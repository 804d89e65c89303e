//! Test fixtures: a fresh database per test, and the `lanyard` binary.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use lanyard_core::Store;
use lanyard_store::DbOptions;
use sqlx::Connection;

/// A database of the test's own: a SQLite file in a temporary directory, or a fresh schema in
/// the PostgreSQL database named by `LANYARD_TEST_DATABASE_URL`.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
    pg: Option<(String, String)>,
}

impl TestDb {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        match std::env::var("LANYARD_TEST_DATABASE_URL") {
            Ok(base) if !base.is_empty() => {
                let schema = format!("t_{}", lanyard_core::secret::random_token(9).unwrap())
                    .replace('-', "_")
                    .to_ascii_lowercase();
                let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
                // The schema name is made here from [a-z0-9_] only.
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
                TestDb {
                    url,
                    dir,
                    pg: Some((base, schema)),
                }
            }
            _ => {
                let url = format!("sqlite://{}", dir.path().join("lanyard.db").display());
                TestDb { url, dir, pg: None }
            }
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.pg.is_some()
    }

    pub async fn store(&self) -> Arc<dyn Store> {
        lanyard_store::open(&self.url, &DbOptions::default())
            .await
            .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((base, schema)) = self.pg.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot block on itself: use a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&base).await {
                    // Never wait long: a server task of the test may still hold a lock, and it
                    // cannot finish while this thread blocks the test's runtime. CI drops the
                    // scratch database at the end anyway.
                    let _ = sqlx::raw_sql("SET lock_timeout = '2s'")
                        .execute(&mut conn)
                        .await;
                    let sql =
                        sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
                    let _ = sqlx::raw_sql(sql).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}

/// The `lanyard` binary with the test's database, run in the test's directory, with no other
/// `LANYARD_*` configuration from the environment.
pub fn lanyard(db: &TestDb) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lanyard"));
    cmd.current_dir(db.dir.path());
    for (k, _) in std::env::vars() {
        if k.starts_with("LANYARD_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("LANYARD_DATABASE_URL", &db.url);
    cmd.env(
        "LANYARD_KEYS__ENCRYPTION_KEY_FILE",
        db.dir.path().join("lanyard.key"),
    );
    // Cheap argon2 parameters: these tests are about the command line, not the cost of hashing.
    cmd.env("LANYARD_PASSWORD__MEMORY_KIB", "64")
        .env("LANYARD_PASSWORD__ITERATIONS", "1");
    cmd
}

/// Runs `cmd` with `stdin` on its standard input.
pub fn run(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may exit before reading its input (bad arguments): a closed pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "the command panicked: {stderr}"
    );
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Lanyard in this process on a random port, with a clock the test moves.
/// Binds a port that a stopping server may still hold for a moment.
pub async fn bind_again(port: u16) -> tokio::net::TcpListener {
    for _ in 0..200 {
        if let Ok(l) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return l;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("port {port} stayed busy");
}

pub struct TestServer {
    pub base: String,
    pub clock: Arc<lanyard_core::ManualClock>,
    pub store: Arc<dyn Store>,
    pub state: lanyard_server::AppState,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TestServer {
    pub async fn start(db: &TestDb, configure: impl FnOnce(&mut lanyard_server::Config)) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(db, listener, configure).await
    }

    /// Lanyard at `http://localhost:PORT`, its own issuer: what a browser needs (Origin checks,
    /// and WebAuthn, which refuses IP addresses).
    pub async fn start_on_localhost(db: &TestDb) -> Self {
        Self::start_on_localhost_with(db, |_| {}).await
    }

    /// Stops this server and starts a new one on the same database, address and issuer, as a
    /// restarted process would be (default settings otherwise).
    pub async fn restart(self, db: &TestDb) -> Self {
        let base = self.base.clone();
        let port = url::Url::parse(&base).unwrap().port().unwrap();
        drop(self);
        let listener = bind_again(port).await;
        let mut server = Self::start_on(db, listener, |c| {
            c.issuer = base.clone().try_into().unwrap();
        })
        .await;
        server.base = base;
        server
    }

    pub async fn start_on_localhost_with(
        db: &TestDb,
        configure: impl FnOnce(&mut lanyard_server::Config),
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let issuer = format!("http://localhost:{port}");
        let mut server = Self::start_on(db, listener, |c| {
            c.issuer = issuer.clone().try_into().unwrap();
            configure(c);
        })
        .await;
        server.base = issuer;
        server
    }

    async fn start_on(
        db: &TestDb,
        listener: tokio::net::TcpListener,
        configure: impl FnOnce(&mut lanyard_server::Config),
    ) -> Self {
        let mut config = lanyard_server::Config {
            database_url: db.url.clone(),
            ..Default::default()
        };
        config.password.memory_kib = 64;
        config.password.iterations = 1;
        config.keys.encryption_key_file = Some(db.dir.path().join("lanyard.key"));
        // Tests send logouts themselves, at moments they choose.
        config.logout.poll_interval = std::time::Duration::from_secs(24 * 3600);
        configure(&mut config);
        // Starts at the real time, so the `lanyard` binary (on the wall clock) agrees with it.
        let clock = Arc::new(lanyard_core::ManualClock::new(lanyard_core::Clock::now(
            &lanyard_core::SystemClock,
        )));
        let store = db.store().await;
        let state = lanyard_server::AppState::new(store.clone(), clock.clone(), config)
            .await
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(lanyard_server::serve(state.clone(), listener, async {
            let _ = rx.await;
        }));
        TestServer {
            base,
            clock,
            store,
            state,
            _stop: tx,
        }
    }

    /// The `sid` of the Lanyard session this browser holds.
    pub async fn sid_of(&self, b: &Browser) -> String {
        let digest = lanyard_core::secret::digest(&b.session_cookie().unwrap());
        self.store
            .session_by_digest(&digest)
            .await
            .unwrap()
            .unwrap()
            .public_id
    }

    /// Every stored session, ended or not (the sweeper may not have run).
    pub async fn sessions(
        &self,
        user: Option<&lanyard_core::user::UserId>,
    ) -> Result<Vec<lanyard_core::session::Session>, lanyard_core::StoreError> {
        let never = lanyard_core::UnixTime::from_secs(i64::MIN);
        self.store.list_sessions(user, never, never).await
    }

    pub fn advance(&self, secs: u64) {
        self.clock.advance(std::time::Duration::from_secs(secs));
    }

    /// Creates a user with this password directly in the store.
    pub async fn add_user(&self, username: &str, password: &str) -> lanyard_core::user::UserId {
        use lanyard_core::audit::{AuditKind, NewAuditEvent};
        use lanyard_core::user::{Email, NewUser, UserId, Username};
        let hash = self
            .state
            .passwords
            .hasher()
            .hash(&secrecy::SecretString::from(password.to_owned()))
            .unwrap();
        let user = NewUser {
            id: UserId::generate().unwrap(),
            username: Username::parse(username).unwrap(),
            email: Email::parse(&format!("{username}@example.org")).unwrap(),
            display_name: None,
            password_hash: hash,
            created_at: lanyard_core::Clock::now(&*self.clock),
        };
        let e = NewAuditEvent::new(
            lanyard_core::Clock::now(&*self.clock),
            AuditKind::UserCreated,
        );
        self.store.create_user(&user, &e).await.unwrap();
        user.id
    }
}

/// A browser: keeps cookies by hand (so tests can tamper with them), follows no redirects,
/// and can come from another loopback address.
pub struct Browser {
    http: reqwest::Client,
    pub base: String,
    pub cookies: std::collections::BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> Option<&str> {
        self.headers.get("location").and_then(|v| v.to_str().ok())
    }

    /// The value of the first hidden `csrf` field.
    pub fn csrf(&self) -> String {
        field(&self.body, "csrf").expect("no csrf field on the page")
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }
}

/// The value of the first input named `name`.
pub fn field(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_owned())
}

impl Browser {
    pub fn new(server: &TestServer) -> Self {
        Self::from_ip(server, "127.0.0.1")
    }

    pub fn from_ip(server: &TestServer, ip: &str) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .local_address(ip.parse::<std::net::IpAddr>().unwrap())
            .user_agent("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0")
            .build()
            .unwrap();
        Self {
            http,
            base: server.base.clone(),
            cookies: Default::default(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let req = if self.cookies.is_empty() {
            req
        } else {
            req.header("cookie", self.cookie_header())
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        for c in headers.get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        let body = r.text().await.unwrap();
        assert!(status != 500, "server error: {body}");
        Page {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let req = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(req).await
    }

    pub async fn post_with(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        header: (&str, &str),
    ) -> Page {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .form(form)
            .header(header.0, header.1);
        self.send(req).await
    }

    /// POSTs a form to an absolute URL (another app on this host).
    pub async fn post_to(&mut self, url: &str, form: &[(&str, &str)]) -> Page {
        let req = self.http.post(url).form(form);
        self.send(req).await
    }

    /// POSTs JSON with the page's CSRF token in `x-csrf-token`, as the WebAuthn script does.
    pub async fn post_json(&mut self, path: &str, body: &serde_json::Value, csrf: &str) -> Page {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .header("x-csrf-token", csrf);
        self.send(req).await
    }

    /// Loads the login page and signs in; returns the answer to the POST.
    pub async fn sign_in(&mut self, username: &str, password: &str) -> Page {
        let page = self.get("/login").await;
        let csrf = page.csrf();
        self.post(
            "/login",
            &[
                ("csrf", &csrf),
                ("username", username),
                ("password", password),
            ],
        )
        .await
    }

    /// Holds a cookie as if a server had set it.
    pub fn set_cookie(&mut self, name: &str, value: &str) {
        self.cookies.insert(name.to_owned(), value.to_owned());
    }

    /// Sends this browser, cookies and all, to another instance (as a load balancer would).
    pub fn point_at(&mut self, server: &TestServer) {
        self.base = server.base.clone();
    }

    /// Changes the password on the account page.
    pub async fn change_password(&mut self, current: &str, new: &str) -> Page {
        let csrf = self.get("/account").await.csrf();
        self.post(
            "/account/password",
            &[("csrf", &csrf), ("current", current), ("new", new)],
        )
        .await
    }

    pub fn session_cookie(&self) -> Option<String> {
        self.cookies.get("lanyard_session").cloned()
    }
}

/// Strings from one SQL query on the test's database, whichever backend it is.
pub async fn query_strings(db: &TestDb, sql: &'static str) -> Vec<String> {
    if db.is_postgres() {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query_scalar(sql).fetch_all(&mut c).await.unwrap()
    } else {
        let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query_scalar(sql).fetch_all(&mut c).await.unwrap()
    }
}

/// Undoes HTML escaping of attribute values: numeric entities (what askama writes) and the
/// named ones for `& < > "`.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';') else { break };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Every `<input type="hidden" name=… value=…>` of a page, unescaped.
pub fn hidden_fields(html: &str) -> Vec<(String, String)> {
    html.split("<input type=\"hidden\" name=\"")
        .skip(1)
        .filter_map(|rest| {
            let (name, rest) = rest.split_once('"')?;
            let rest = rest.strip_prefix(" value=\"")?;
            let (value, _) = rest.split_once('"')?;
            Some((unescape(name), unescape(value)))
        })
        .collect()
}

impl Browser {
    /// GET an absolute URL or a path.
    pub async fn open(&mut self, url: &str) -> Page {
        let url = if url.starts_with('/') {
            format!("{}{url}", self.base)
        } else {
            url.to_owned()
        };
        let req = self.http.get(url);
        self.send(req).await
    }

    /// Follows Lanyard's redirects from `url` as a person would: signs in with `credentials`
    /// when the login form shows, answers the consent page with `allow`, and stops at the
    /// first redirect that leaves Lanyard. Returns that URL (or the page it stopped on).
    pub async fn authorize(
        &mut self,
        url: &str,
        credentials: Option<(&str, &str)>,
        allow: Option<bool>,
    ) -> Result<url::Url, Page> {
        let mut page = self.open(url).await;
        for _ in 0..10 {
            if page.status == 303 {
                let loc = page.location().unwrap().to_owned();
                if !loc.starts_with('/') && !loc.starts_with(&self.base) {
                    return Ok(url::Url::parse(&loc).unwrap());
                }
                page = self.open(&loc).await;
                continue;
            }
            if page.status == 200 && page.body.contains("action=\"/login\"") {
                let Some((user, password)) = credentials else {
                    return Err(page);
                };
                let mut form = hidden_fields(&page.body);
                form.push(("username".into(), user.into()));
                form.push(("password".into(), password.into()));
                let pairs: Vec<(&str, &str)> =
                    form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                page = self.post("/login", &pairs).await;
                continue;
            }
            if page.status == 200 && page.body.contains("action=\"/consent\"") {
                let Some(allow) = allow else { return Err(page) };
                let mut form = hidden_fields(&page.body);
                form.push((
                    "decision".into(),
                    if allow { "allow" } else { "deny" }.into(),
                ));
                let pairs: Vec<(&str, &str)> =
                    form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                page = self.post("/consent", &pairs).await;
                continue;
            }
            return Err(page);
        }
        Err(page)
    }
}

/// A client registered in the store; returns its id and secret (if confidential).
pub async fn register_client(
    store: &Arc<dyn Store>,
    reg: lanyard_core::client::ClientRegistration,
) -> (String, Option<String>) {
    use lanyard_core::audit::{AuditKind, NewAuditEvent};
    let now = lanyard_core::Clock::now(&lanyard_core::SystemClock);
    let v = reg.validate(now).unwrap();
    store
        .create_client(
            &v.client,
            &NewAuditEvent::new(now, AuditKind::ClientCreated),
        )
        .await
        .unwrap();
    let secret = v
        .secret
        .map(|s| secrecy::ExposeSecret::expose_secret(&s).to_owned());
    (v.client.id.as_str().to_owned(), secret)
}
