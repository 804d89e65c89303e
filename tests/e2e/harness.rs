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
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
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
