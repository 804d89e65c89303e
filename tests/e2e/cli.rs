//! The `lanyard` command line, run as a user would run it.

use lanyard_core::password::{PasswordHasher, PasswordPolicy, Verified};
use lanyard_core::user::Username;
use secrecy::SecretString;

use crate::harness::{TestDb, lanyard, run, stderr, stdout};

fn add_ada(db: &TestDb) -> std::process::Output {
    run(
        lanyard(db)
            .args([
                "user",
                "add",
                "--username",
                "ada",
                "--email",
                "ada@example.org",
            ])
            .args(["--name", "Ada Lovelace", "--password-stdin"]),
        "correct horse battery\n",
    )
}

fn verifies(hash: &str, password: &str) -> bool {
    let policy = PasswordPolicy {
        memory_kib: 64,
        iterations: 1,
        ..Default::default()
    };
    let hasher = PasswordHasher::new(policy).unwrap();
    matches!(
        hasher.verify(&SecretString::from(password.to_owned()), hash),
        Verified::Yes { .. }
    )
}

#[tokio::test]
async fn user_add_list_disable_and_set_password() {
    let db = TestDb::new().await;
    let out = add_ada(&db);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Created user ada"));

    let store = db.store().await;
    let ada = store
        .user_by_username(&Username::parse("ada").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        ada.password_hash.starts_with("$argon2id$"),
        "{}",
        ada.password_hash
    );
    assert!(verifies(&ada.password_hash, "correct horse battery"));

    let out = run(lanyard(&db).args(["user", "list", "--json"]), "");
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["username"], "ada");
    assert_eq!(list[0]["display_name"], "Ada Lovelace");
    assert_eq!(list[0]["disabled"], false);
    assert!(
        list[0].get("password_hash").is_none(),
        "hashes stay out of listings"
    );
    let out = run(lanyard(&db).args(["user", "list"]), "");
    assert!(stdout(&out).contains("ada@example.org"));

    let out = run(
        lanyard(&db).args(["user", "set-password", "ada", "--password-stdin"]),
        "a new passphrase\r\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let ada = store.user_by_id(&ada.id).await.unwrap().unwrap();
    assert!(verifies(&ada.password_hash, "a new passphrase"));
    assert!(!verifies(&ada.password_hash, "correct horse battery"));

    let out = run(lanyard(&db).args(["user", "disable", "ada"]), "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(store.user_by_id(&ada.id).await.unwrap().unwrap().disabled);

    let out = run(lanyard(&db).args(["audit", "--user", "ada", "--json"]), "");
    let events: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<_> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["user.disabled", "user.password_changed", "user.created"]
    );
}

#[tokio::test]
async fn bad_user_input_is_refused_with_one_sentence_and_no_row() {
    let db = TestDb::new().await;
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &[
                "--username",
                "ada",
                "--email",
                "ada@example.org",
                "--password-stdin",
            ],
            "",
            "no password",
        ),
        (
            &[
                "--username",
                "ada",
                "--email",
                "ada@example.org",
                "--password-stdin",
            ],
            "\n",
            "no password",
        ),
        (
            &[
                "--username",
                "ada",
                "--email",
                "ada@example.org",
                "--password-stdin",
            ],
            "short\n",
            "at least 8",
        ),
        (
            &[
                "--username",
                "a d a",
                "--email",
                "ada@example.org",
                "--password-stdin",
            ],
            "long enough\n",
            "username",
        ),
        (
            &[
                "--username",
                "ada",
                "--email",
                "not-an-email",
                "--password-stdin",
            ],
            "long enough\n",
            "email",
        ),
    ];
    for (args, stdin, expected) in cases {
        let out = run(lanyard(&db).args(["user", "add"]).args(*args), stdin);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.starts_with("error: ") && err.contains(expected),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "one sentence: {err}");
    }
    // Passwords only come from stdin: without the flag, it is a usage error.
    let out = run(
        lanyard(&db).args(["user", "add", "--username", "ada", "--email", "a@b.org"]),
        "pw\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--password-stdin"));
    let out = run(lanyard(&db).args(["user", "add", "--password", "x"]), "");
    assert_eq!(out.status.code(), Some(2));

    assert!(db.store().await.list_users().await.unwrap().is_empty());

    assert!(add_ada(&db).status.success());
    let out = run(
        lanyard(&db).args([
            "user",
            "add",
            "--username",
            "ADA",
            "--email",
            "other@example.org",
            "--password-stdin",
        ]),
        "long enough\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(db.store().await.list_users().await.unwrap().len(), 1);

    for args in [
        &["user", "disable", "nobody"][..],
        &["user", "set-password", "nobody", "--password-stdin"],
    ] {
        let out = run(lanyard(&db).args(args), "long enough\n");
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("no user named"), "{}", stderr(&out));
    }
}

#[tokio::test]
async fn client_add_json_list_and_remove() {
    let db = TestDb::new().await;
    let out = run(
        lanyard(&db)
            .args([
                "client",
                "add",
                "--name",
                "Wiki",
                "--redirect-uri",
                "https://wiki.example/cb",
            ])
            .args([
                "--redirect-uri",
                "http://localhost:3000/cb",
                "--id-token-alg",
                "EdDSA",
            ])
            .args([
                "--backchannel-logout-uri",
                "https://wiki.example/bc",
                "--skip-consent",
                "--json",
            ]),
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = created["client_id"].as_str().unwrap().to_owned();
    let secret = created["client_secret"].as_str().unwrap().to_owned();
    assert!(secret.len() >= 43, "256 bits or more");
    assert_eq!(created.as_object().unwrap().len(), 2);

    let store = db.store().await;
    let c = store
        .client_by_id(&lanyard_core::client::ClientId::from_stored(id.clone()))
        .await
        .unwrap()
        .unwrap();
    assert!(c.secret_matches(&secret));
    assert_ne!(
        c.secret_hash.as_deref(),
        Some(secret.as_str()),
        "stored hashed"
    );
    assert_eq!(c.id_token_alg.as_str(), "EdDSA");
    assert!(c.skip_consent);

    let out = run(
        lanyard(&db)
            .args([
                "client",
                "add",
                "--name",
                "SPA",
                "--public",
                "--redirect-uri",
                "http://127.0.0.1:5173/",
            ])
            .arg("--json"),
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let public: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(public.get("client_secret").is_none());

    let out = run(lanyard(&db).args(["client", "list", "--json"]), "");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[1]["client_id"], id.as_str());
    assert_eq!(
        list[1]["grant_types"],
        serde_json::json!(["authorization_code", "refresh_token"])
    );
    assert!(!stdout(&out).contains(&secret));
    let out = run(lanyard(&db).args(["client", "list"]), "");
    assert!(stdout(&out).contains("Wiki") && !stdout(&out).contains(&secret));

    let out = run(lanyard(&db).args(["client", "remove", &id]), "");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(lanyard(&db).args(["client", "remove", &id]), "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no client"));
    assert_eq!(store.list_clients().await.unwrap().len(), 1);
}

#[tokio::test]
async fn bad_client_input_is_refused_and_writes_nothing() {
    let db = TestDb::new().await;
    let cases: &[(&[&str], &str)] = &[
        (&["--name", "A", "--redirect-uri", "/relative"], "absolute"),
        (
            &["--name", "A", "--redirect-uri", "https://a.example/cb#x"],
            "fragment",
        ),
        (
            &["--name", "A", "--redirect-uri", "http://a.example/cb"],
            "localhost",
        ),
        (
            &[
                "--name",
                "A",
                "--redirect-uri",
                "https://a.example/",
                "--post-logout-redirect-uri",
                "ftp://x/",
            ],
            "https",
        ),
        (&["--name", "A"], "at least one redirect URI"),
        (
            &[
                "--name",
                "A",
                "--public",
                "--grant-type",
                "client_credentials",
            ],
            "public client",
        ),
        (
            &["--name", "", "--redirect-uri", "https://a.example/"],
            "name",
        ),
    ];
    for (args, expected) in cases {
        let out = run(lanyard(&db).args(["client", "add"]).args(*args), "");
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    for args in [
        &[
            "--name",
            "A",
            "--redirect-uri",
            "https://a.example/",
            "--id-token-alg",
            "HS256",
        ][..],
        &["--name", "A", "--grant-type", "implicit"],
        &["--name", "A", "--frobnicate"],
    ] {
        let out = run(lanyard(&db).args(["client", "add"]).args(args), "");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    assert!(db.store().await.list_clients().await.unwrap().is_empty());

    let ok = [
        "client",
        "add",
        "--name",
        "A",
        "--redirect-uri",
        "https://a.example/",
    ];
    assert!(run(lanyard(&db).args(ok), "").status.success());
    let out = run(lanyard(&db).args(ok), "");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"));
    assert_eq!(db.store().await.list_clients().await.unwrap().len(), 1);

    // client_credentials-only clients need no redirect URI.
    let out = run(
        lanyard(&db).args([
            "client",
            "add",
            "--name",
            "Batch",
            "--grant-type",
            "client_credentials",
        ]),
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test]
async fn bad_configuration_and_unreachable_databases_are_reported() {
    let db = TestDb::new().await;
    let out = run(
        lanyard(&db)
            .args(["migrate"])
            .env("LANYARD_SESSION__IDLE_TIMEOUT", "banana"),
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("session.idle_timeout"),
        "{}",
        stderr(&out)
    );

    std::fs::write(
        db.dir.path().join("broken.toml"),
        "issuer = [unterminated\n",
    )
    .unwrap();
    let out = run(
        lanyard(&db).args(["--config", "broken.toml", "migrate"]),
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("broken.toml"), "{}", stderr(&out));

    let out = run(
        lanyard(&db)
            .args(["migrate"])
            .env("LANYARD_CONFIG", "absent.toml"),
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("absent.toml"), "{}", stderr(&out));

    let started = std::time::Instant::now();
    let out = run(
        lanyard(&db)
            .args(["user", "list"])
            .env(
                "LANYARD_DATABASE_URL",
                "postgres://lanyard:hunter2@127.0.0.1:9/nowhere",
            )
            .env("LANYARD_DATABASE__CONNECT_TIMEOUT", "2s"),
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("cannot open the database"), "{err}");
    assert!(
        !err.contains("hunter2"),
        "the password must not be printed: {err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));

    let out = run(
        lanyard(&db).args(["migrate"]).env(
            "LANYARD_DATABASE_URL",
            "sqlite:///nonexistent-dir/x/lanyard.db",
        ),
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot open the database"),
        "{}",
        stderr(&out)
    );

    let out = run(lanyard(&db).args(["migrate"]), "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("up to date"));
}
