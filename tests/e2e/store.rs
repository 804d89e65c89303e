//! The storage contract: what every `Store` backend must do, run against the backend under test.

use lanyard_core::audit::{AuditKind, NewAuditEvent};
use lanyard_core::client::{ClientId, ClientRegistration, GrantType, IdTokenAlg};
use lanyard_core::user::{DisplayName, Email, NewUser, UserId, Username};
use lanyard_core::{StoreError, UnixTime};

use crate::harness::TestDb;

fn new_user(name: &str, at: i64) -> NewUser {
    NewUser {
        id: UserId::generate().unwrap(),
        username: Username::parse(name).unwrap(),
        email: Email::parse(&format!("{name}@example.org")).unwrap(),
        display_name: Some(DisplayName::parse("Test Person").unwrap()),
        password_hash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into(),
        created_at: UnixTime::from_secs(at),
    }
}

fn event(kind: AuditKind, at: i64) -> NewAuditEvent {
    NewAuditEvent::new(UnixTime::from_secs(at), kind)
}

fn registration(name: &str) -> ClientRegistration {
    ClientRegistration {
        name: name.into(),
        redirect_uris: vec![
            "https://app.example/cb".into(),
            "http://localhost:3000/cb".into(),
        ],
        post_logout_redirect_uris: vec!["https://app.example/bye".into()],
        backchannel_logout_uri: Some("https://app.example/bc".into()),
        frontchannel_logout_uri: None,
        public: false,
        skip_consent: true,
        id_token_alg: IdTokenAlg::ES256,
        grant_types: vec![GrantType::AuthorizationCode, GrantType::ClientCredentials],
        require_mfa: true,
    }
}

#[tokio::test]
async fn users_round_trip() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let ada = new_user("ada", 100);
    let bob = new_user("bob", 200);
    store
        .create_user(&bob, &event(AuditKind::UserCreated, 200))
        .await
        .unwrap();
    store
        .create_user(&ada, &event(AuditKind::UserCreated, 100))
        .await
        .unwrap();

    let found = store
        .user_by_username(&Username::parse("ADA").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, ada.id);
    assert_eq!(found.email.as_str(), "ada@example.org");
    assert_eq!(found.display_name.as_ref().unwrap().as_str(), "Test Person");
    assert_eq!(found.password_hash, ada.password_hash);
    assert!(!found.disabled);
    assert_eq!(found.created_at, UnixTime::from_secs(100));
    assert_eq!(
        store
            .user_by_id(&bob.id)
            .await
            .unwrap()
            .unwrap()
            .username
            .as_str(),
        "bob"
    );
    assert!(
        store
            .user_by_username(&Username::parse("carol").unwrap())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .user_by_id(&UserId::from_stored("nope".into()))
            .await
            .unwrap()
            .is_none()
    );

    let names: Vec<_> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username.to_string())
        .collect();
    assert_eq!(names, ["ada", "bob"]);
}

#[tokio::test]
async fn a_taken_username_conflicts_and_writes_nothing() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let first = new_user("ada", 1);
    store
        .create_user(
            &first,
            &event(AuditKind::UserCreated, 1).user(first.id.as_str()),
        )
        .await
        .unwrap();
    let again = new_user("Ada", 2);
    let err = store
        .create_user(
            &again,
            &event(AuditKind::UserCreated, 2).user(again.id.as_str()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("ada")),
        "{err:?}"
    );
    assert_eq!(store.list_users().await.unwrap().len(), 1);
    // The audit event of the failed write was rolled back with it.
    let events = store.list_audit(None, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].user_id.as_deref(), Some(first.id.as_str()));
}

#[tokio::test]
async fn disabling_and_changing_passwords() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let ada = new_user("ada", 1);
    store
        .create_user(&ada, &event(AuditKind::UserCreated, 1))
        .await
        .unwrap();

    let unknown = UserId::from_stored("unknown".into());
    assert!(
        !store
            .disable_user(&unknown, &event(AuditKind::UserDisabled, 2))
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_password_hash(&unknown, "h", None, &event(AuditKind::PasswordChanged, 2))
            .await
            .unwrap()
    );
    // Nothing happened, so nothing was audited.
    assert_eq!(store.list_audit(None, 10).await.unwrap().len(), 1);

    assert!(
        store
            .set_password_hash(
                &ada.id,
                "new-hash",
                None,
                &event(AuditKind::PasswordChanged, 3)
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .disable_user(&ada.id, &event(AuditKind::UserDisabled, 4))
            .await
            .unwrap()
    );
    let u = store.user_by_id(&ada.id).await.unwrap().unwrap();
    assert!(u.disabled);
    assert_eq!(u.password_hash, "new-hash");
    let kinds: Vec<_> = store
        .list_audit(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        ["user.disabled", "user.password_changed", "user.created"]
    );
}

#[tokio::test]
async fn clients_round_trip() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let valid = registration("Wiki")
        .validate(UnixTime::from_secs(5))
        .unwrap();
    store
        .create_client(&valid.client, &event(AuditKind::ClientCreated, 5))
        .await
        .unwrap();

    let mut public = registration("Notes");
    public.public = true;
    public.grant_types = vec![];
    public.backchannel_logout_uri = None;
    public.frontchannel_logout_uri = Some("https://notes.example/fc".into());
    let public = public.validate(UnixTime::from_secs(6)).unwrap();
    store
        .create_client(&public.client, &event(AuditKind::ClientCreated, 6))
        .await
        .unwrap();

    let c = store.client_by_id(&valid.client.id).await.unwrap().unwrap();
    assert_eq!(c.name, "Wiki");
    assert!(!c.public);
    assert_eq!(
        c.redirect_uris,
        ["https://app.example/cb", "http://localhost:3000/cb"]
    );
    assert_eq!(c.post_logout_redirect_uris, ["https://app.example/bye"]);
    assert_eq!(
        c.backchannel_logout_uri.as_deref(),
        Some("https://app.example/bc")
    );
    assert_eq!(c.frontchannel_logout_uri, None);
    assert_eq!(
        c.grant_types,
        [GrantType::AuthorizationCode, GrantType::ClientCredentials]
    );
    assert_eq!(c.id_token_alg, IdTokenAlg::ES256);
    assert!(c.skip_consent);
    assert!(c.require_mfa);
    assert_eq!(c.created_at, UnixTime::from_secs(5));
    // Only the digest is stored, and it still recognises the secret.
    let secret = secrecy::ExposeSecret::expose_secret(valid.secret.as_ref().unwrap()).to_owned();
    assert_ne!(c.secret_hash.as_deref(), Some(secret.as_str()));
    assert!(c.secret_matches(&secret));

    let p = store
        .client_by_id(&public.client.id)
        .await
        .unwrap()
        .unwrap();
    assert!(p.public && p.secret_hash.is_none());
    assert_eq!(
        p.grant_types,
        [GrantType::AuthorizationCode, GrantType::RefreshToken]
    );
    assert_eq!(
        p.frontchannel_logout_uri.as_deref(),
        Some("https://notes.example/fc")
    );

    let names: Vec<_> = store
        .list_clients()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["Notes", "Wiki"]);
}

#[tokio::test]
async fn a_taken_client_name_conflicts_and_removal_is_exact() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let a = registration("Wiki")
        .validate(UnixTime::from_secs(1))
        .unwrap();
    store
        .create_client(&a.client, &event(AuditKind::ClientCreated, 1))
        .await
        .unwrap();
    let b = registration("Wiki")
        .validate(UnixTime::from_secs(2))
        .unwrap();
    let err = store
        .create_client(&b.client, &event(AuditKind::ClientCreated, 2))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("Wiki")),
        "{err:?}"
    );
    assert_eq!(store.list_audit(None, 10).await.unwrap().len(), 1);

    let unknown = ClientId::from_stored("unknown".into());
    assert!(
        !store
            .remove_client(&unknown, &event(AuditKind::ClientRemoved, 3))
            .await
            .unwrap()
    );
    assert!(
        store
            .remove_client(&a.client.id, &event(AuditKind::ClientRemoved, 3))
            .await
            .unwrap()
    );
    assert!(store.client_by_id(&a.client.id).await.unwrap().is_none());
    assert!(store.list_clients().await.unwrap().is_empty());
}

#[tokio::test]
async fn audit_log_newest_first_by_user_and_limited() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let ada = new_user("ada", 1);
    store
        .create_user(
            &ada,
            &event(AuditKind::UserCreated, 1).user(ada.id.as_str()),
        )
        .await
        .unwrap();
    let mut e = event(AuditKind::PasswordChanged, 2)
        .user(ada.id.as_str())
        .detail("from test");
    e.actor.ip = Some("192.0.2.7".into());
    e.actor.user_agent = Some("Firefox".into());
    store.append_audit(&e).await.unwrap();
    store
        .append_audit(&event(AuditKind::ClientCreated, 3).client("c1"))
        .await
        .unwrap();

    let all = store.list_audit(None, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["client.created", "user.password_changed", "user.created"]
    );
    assert_eq!(all[0].client_id.as_deref(), Some("c1"));
    assert_eq!(all[1].ip.as_deref(), Some("192.0.2.7"));
    assert_eq!(all[1].user_agent.as_deref(), Some("Firefox"));
    assert_eq!(all[1].detail, "from test");
    assert_eq!(all[1].at, UnixTime::from_secs(2));

    let adas = store.list_audit(Some(&ada.id), 10).await.unwrap();
    assert_eq!(adas.len(), 2);
    assert!(
        adas.iter()
            .all(|e| e.user_id.as_deref() == Some(ada.id.as_str()))
    );
    assert_eq!(store.list_audit(None, 1).await.unwrap().len(), 1);
}

#[tokio::test]
async fn reopening_migrates_once_and_keeps_data() {
    let db = TestDb::new().await;
    let store = db.store().await;
    store
        .create_user(&new_user("ada", 1), &event(AuditKind::UserCreated, 1))
        .await
        .unwrap();
    drop(store);
    let again = db.store().await;
    again.ping().await.unwrap();
    assert_eq!(again.list_users().await.unwrap().len(), 1);
}

#[tokio::test]
async fn sqlite_runs_in_wal_mode() {
    let db = TestDb::new().await;
    if db.is_postgres() {
        return;
    }
    let _store = db.store().await;
    let path = db.dir.path().join("lanyard.db");
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}",
        path.display()
    ))
    .await
    .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

/// The test's store, with the user "ada" and the client "Wiki" in it.
async fn ada_and_wiki(
    db: &TestDb,
) -> (
    std::sync::Arc<dyn lanyard_core::Store>,
    NewUser,
    lanyard_core::client::Client,
) {
    let store = db.store().await;
    let ada = new_user("ada", 100);
    store
        .create_user(&ada, &event(AuditKind::UserCreated, 100))
        .await
        .unwrap();
    let client = registration("Wiki")
        .validate(UnixTime::from_secs(5))
        .unwrap()
        .client;
    store
        .create_client(&client, &event(AuditKind::ClientCreated, 5))
        .await
        .unwrap();
    (store, ada, client)
}

#[tokio::test]
async fn an_access_token_is_active_only_while_everything_behind_it_holds() {
    use lanyard_core::session::{NewSession, SessionSecret};
    use lanyard_core::store::AccessTokenCheck;
    let db = TestDb::new().await;
    let (store, ada, client) = ada_and_wiki(&db).await;
    let t = UnixTime::from_secs;
    let other = registration("Other").validate(t(6)).unwrap().client;
    store
        .create_client(&other, &event(AuditKind::ClientCreated, 6))
        .await
        .unwrap();
    let secret = SessionSecret::generate().unwrap();
    let session = NewSession::new(&secret, ada.id.clone(), t(1000), vec!["pwd".into()]).unwrap();
    let sid = store.create_session(&session, None, 10, &[]).await.unwrap();
    let nobody = UserId::generate().unwrap();
    let gone = ClientId::from_stored("no-such-client".into());
    let good = AccessTokenCheck {
        jti: "j1",
        family: Some("f1"),
        session: Some(&sid),
        client: &client.id,
        user: Some(&ada.id),
        idle_cutoff: t(999),
        lifetime_cutoff: t(0),
    };
    // Both reads agree: the bare rule, and the one that also returns the user.
    let active = async |c: AccessTokenCheck<'_>| {
        let active = store.access_token_active(&c).await.unwrap();
        if c.user.is_some() {
            let user = store.active_token_user(&c).await.unwrap();
            assert_eq!(user.is_some(), active);
            assert!(user.is_none_or(|u| Some(&u.id) == c.user));
        }
        active
    };
    assert!(active(good).await);
    // Without a session or a user (client_credentials) there is nothing more to hold.
    let bare = AccessTokenCheck {
        session: None,
        user: None,
        family: None,
        ..good
    };
    assert!(active(bare).await);
    // Each rule alone makes the token inactive.
    for (broken, why) in [
        (
            AccessTokenCheck {
                idle_cutoff: t(1000),
                ..good
            },
            "idle",
        ),
        (
            AccessTokenCheck {
                lifetime_cutoff: t(1000),
                ..good
            },
            "too old",
        ),
        (
            AccessTokenCheck {
                session: Some("no-such-sid"),
                ..good
            },
            "no session",
        ),
        (
            AccessTokenCheck {
                user: Some(&nobody),
                ..good
            },
            "no user",
        ),
        (
            AccessTokenCheck {
                client: &gone,
                ..good
            },
            "no client",
        ),
    ] {
        assert!(!active(broken).await, "{why}");
    }

    store.revoke_access_token("j1", t(5000)).await.unwrap();
    assert!(!active(good).await, "jti revoked");
    let next = AccessTokenCheck { jti: "j2", ..good };
    assert!(active(next).await);
    store.revoke_refresh_family("f1", t(2000)).await.unwrap();
    assert!(!active(next).await, "family revoked");
    let next = AccessTokenCheck {
        family: None,
        ..next
    };
    assert!(active(next).await);

    store
        .remove_client(&client.id, &event(AuditKind::ClientRemoved, 3000))
        .await
        .unwrap();
    assert!(!active(next).await, "client removed");
    let next = AccessTokenCheck {
        client: &other.id,
        ..next
    };
    assert!(active(next).await);
    store
        .disable_user(&ada.id, &event(AuditKind::UserDisabled, 3000))
        .await
        .unwrap();
    // Disabling also ends the session; without one, the user alone decides.
    assert!(
        !active(AccessTokenCheck {
            session: None,
            ..next
        })
        .await,
        "user disabled"
    );
}

#[tokio::test]
async fn a_refresh_token_rotates_once_however_many_race_for_it() {
    use lanyard_core::grant::{Authentication, RefreshRedemption, RefreshToken};
    let db = TestDb::new().await;
    let (store, ada, client) = ada_and_wiki(&db).await;
    let t = UnixTime::from_secs;
    let first = RefreshToken {
        token_digest: "d0".into(),
        family_id: "fam".into(),
        client_id: client.id.clone(),
        user_id: ada.id.clone(),
        session_id: Some("sid".into()),
        scope: "openid email".into(),
        auth: Authentication {
            auth_time: t(900),
            amr: vec!["pwd".into(), "otp".into()],
            acr: None,
        },
        issued_at: t(1000),
        expires_at: t(9000),
    };
    store.insert_refresh_token(&first).await.unwrap();

    // Eight rotations of the same token at once, each with its own successor.
    let mut racers = tokio::task::JoinSet::new();
    for i in 1..=8 {
        let store = store.clone();
        racers.spawn(async move {
            let next = format!("d{i}");
            let r = store.rotate_refresh_token("d0", &next, t(2000)).await;
            (next, r.unwrap())
        });
    }
    let mut fresh = Vec::new();
    for (next, outcome) in racers.join_all().await {
        match outcome {
            RefreshRedemption::Fresh(successor) => fresh.push((next, successor)),
            RefreshRedemption::Reused { family_id } => assert_eq!(family_id, "fam"),
            RefreshRedemption::Unknown => panic!("the token was there"),
        }
    }
    assert_eq!(fresh.len(), 1, "exactly one rotation wins");
    let (next, successor) = &fresh[0];
    assert_eq!(&successor.token_digest, next);
    assert_eq!(successor.family_id, "fam");
    assert_eq!(successor.client_id, client.id);
    assert_eq!(successor.user_id, ada.id);
    assert_eq!(successor.session_id.as_deref(), Some("sid"));
    assert_eq!(successor.scope, "openid email");
    assert_eq!(successor.auth.amr, ["pwd", "otp"]);
    assert_eq!(successor.auth.auth_time, t(900));
    assert_eq!(successor.issued_at, t(2000));
    assert_eq!(
        successor.expires_at,
        t(9000),
        "rotation never extends a grant"
    );

    // The losers presented a used token: the family is revoked, the winner's successor with it.
    let used = store.refresh_token("d0").await.unwrap().unwrap();
    assert!(used.used);
    let winner = store.refresh_token(next).await.unwrap().unwrap();
    assert!(winner.revoked);
    assert!(matches!(
        store
            .rotate_refresh_token(next, "d99", t(2001))
            .await
            .unwrap(),
        RefreshRedemption::Reused { .. }
    ));
    assert!(matches!(
        store
            .rotate_refresh_token("nope", "d98", t(2001))
            .await
            .unwrap(),
        RefreshRedemption::Unknown
    ));
}

#[tokio::test]
async fn a_grant_reads_its_user_and_session_at_once() {
    use lanyard_core::session::{NewSession, SessionSecret};
    let db = TestDb::new().await;
    let store = db.store().await;
    let t = UnixTime::from_secs;
    let (ada, bob) = (new_user("ada", 100), new_user("bob", 100));
    for u in [&ada, &bob] {
        store
            .create_user(u, &event(AuditKind::UserCreated, 100))
            .await
            .unwrap();
    }
    let secret = SessionSecret::generate().unwrap();
    let session = NewSession::new(&secret, ada.id.clone(), t(1000), vec!["pwd".into()]).unwrap();
    let sid = store.create_session(&session, None, 10, &[]).await.unwrap();
    let read = async |user: &UserId, sid: Option<&str>, idle: i64, lifetime: i64| {
        store
            .user_with_session(user, sid, t(idle), t(lifetime))
            .await
            .unwrap()
            .map(|(u, alive)| (u.username.as_str().to_owned(), alive))
    };
    assert_eq!(
        read(&ada.id, Some(&sid), 999, 0).await,
        Some(("ada".into(), true))
    );
    assert_eq!(
        read(&ada.id, Some(&sid), 1000, 0).await,
        Some(("ada".into(), false)),
        "idle"
    );
    assert_eq!(
        read(&ada.id, Some(&sid), 999, 1000).await,
        Some(("ada".into(), false)),
        "old"
    );
    assert_eq!(
        read(&ada.id, None, 999, 0).await,
        Some(("ada".into(), false))
    );
    // Another user's session is never this user's.
    assert_eq!(
        read(&bob.id, Some(&sid), 999, 0).await,
        Some(("bob".into(), false))
    );
    assert_eq!(
        read(&UserId::generate().unwrap(), Some(&sid), 999, 0).await,
        None
    );
}

/// A store on the test's PostgreSQL schema whose connections carry `name`, so that the test can
/// find them in `pg_stat_activity`.
async fn pg_store_named(db: &TestDb, name: &str) -> std::sync::Arc<dyn lanyard_core::Store> {
    let url = format!("{}&application_name={name}", db.url);
    lanyard_store::open(&url, &lanyard_store::DbOptions::default())
        .await
        .unwrap()
}

async fn pings_at_once(
    store: &std::sync::Arc<dyn lanyard_core::Store>,
    n: usize,
) -> Vec<Result<(), StoreError>> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let store = store.clone();
        set.spawn(async move { store.ping().await });
    }
    set.join_all().await
}

async fn pg_connections_named(db: &TestDb, name: &str) -> i64 {
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = $1")
        .bind(name)
        .fetch_one(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn postgres_connections_killed_under_the_store_are_replaced() {
    let db = TestDb::new().await;
    if !db.is_postgres() {
        return;
    }
    let name = format!("killed{}", std::process::id());
    let store = pg_store_named(&db, &name).await;
    // Several connections open and idle.
    let mut open = 0;
    for _ in 0..50 {
        let pings = pings_at_once(&store, 8).await;
        assert!(pings.iter().all(Result::is_ok));
        open = pg_connections_named(&db, &name).await;
        if open >= 2 {
            break;
        }
    }
    assert!(open >= 2, "{open} connections");

    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(&name)
    .execute(&mut admin)
    .await
    .unwrap();
    for _ in 0..100 {
        if pg_connections_named(&db, &name).await == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(pg_connections_named(&db, &name).await, 0);

    // The first use meets a dead connection and says the database is unavailable; that failure
    // gets every other idle connection tested before use, so nothing else fails.
    let first = store.ping().await;
    assert!(
        matches!(first, Ok(()) | Err(StoreError::Unavailable(_))),
        "{first:?}"
    );
    for _ in 0..10 {
        store.ping().await.unwrap();
    }
    let pings = pings_at_once(&store, 4).await;
    assert!(pings.iter().all(Result::is_ok), "{pings:?}");
    assert_eq!(store.list_users().await.unwrap().len(), 0);
}

#[tokio::test]
async fn postgres_a_transaction_cancelled_midway_holds_no_lock_afterwards() {
    use lanyard_core::session::{NewSession, SessionSecret};
    use sqlx::Connection as _;
    let db = TestDb::new().await;
    if !db.is_postgres() {
        return;
    }
    let (store, ada, _) = ada_and_wiki(&db).await;
    let lock_ada = "SELECT id FROM users WHERE id = $1 FOR UPDATE NOWAIT";

    // The test holds ada's row, so the store's sign-in waits inside its transaction, and is
    // given up there.
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut held = holder.begin().await.unwrap();
    sqlx::query(lock_ada)
        .bind(ada.id.as_str())
        .execute(&mut *held)
        .await
        .unwrap();
    let secret = SessionSecret::generate().unwrap();
    let session =
        NewSession::new(&secret, ada.id.clone(), UnixTime::from_secs(1000), vec![]).unwrap();
    let waited = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        store.create_session(&session, None, 10, &[]),
    )
    .await;
    assert!(waited.is_err(), "the sign-in did not wait for the lock");
    held.commit().await.unwrap();

    // The abandoned transaction ends promptly though the store is not used again: its row lock
    // is free for others.
    let mut other = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut free = false;
    for _ in 0..100 {
        let mut tx = other.begin().await.unwrap();
        free = sqlx::query(lock_ada)
            .bind(ada.id.as_str())
            .execute(&mut *tx)
            .await
            .is_ok();
        tx.rollback().await.unwrap();
        if free {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(free, "ada's row stayed locked by the abandoned sign-in");
    store.create_session(&session, None, 10, &[]).await.unwrap();
}

/// Ends every PostgreSQL connection named `name`, as a database restart would.
async fn kill_pg_connections(db: &TestDb, name: &str) {
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(&mut admin)
    .await
    .unwrap();
}

#[tokio::test]
async fn postgres_requests_that_meet_a_killed_connection_say_unavailable_then_recover() {
    use crate::harness::{Browser, TestServer, register_client};
    let mut db = TestDb::new().await;
    if !db.is_postgres() {
        return;
    }
    let name = format!("served{}", std::process::id());
    db.url = format!("{}&application_name={name}", db.url);
    let server = TestServer::start(&db, |_| {}).await;
    server.add_user("ada", "correct horse battery").await;
    let mut b = Browser::new(&server);
    b.sign_in("ada", "correct horse battery").await;
    assert_eq!(b.get("/session/check").await.status, 204);
    let mut robots = Vec::new();
    for i in 0..5 {
        let reg = ClientRegistration {
            name: format!("Robot {i}"),
            grant_types: vec![GrantType::ClientCredentials],
            ..Default::default()
        };
        robots.push(register_client(&server.store, reg).await);
    }
    let http = reqwest::Client::new();
    let token = async |(id, secret): &(String, Option<String>)| {
        http.post(format!("{}/token", server.base))
            .basic_auth(id, secret.as_deref())
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap()
    };

    // The request right after the kill meets a dead connection (unless a background task met
    // it first): it gets a clear 503, and the next ones succeed.
    let mut unavailable = 0;
    for _ in 0..5 {
        kill_pg_connections(&db, &name).await;
        let first = b.get("/session/check").await;
        match first.status {
            204 => {}
            503 => {
                unavailable += 1;
                assert!(first.body.contains("briefly unavailable"), "{}", first.body);
                assert!(first.headers.contains_key("retry-after"));
            }
            other => panic!("{other}: {}", first.body),
        }
        for _ in 0..3 {
            assert_eq!(b.get("/session/check").await.status, 204);
        }
        if unavailable > 0 {
            break;
        }
    }
    assert!(unavailable > 0, "no page request met a killed connection");

    // A protocol endpoint: each robot is new to the client cache, so its first request reads
    // the database.
    let mut unavailable = 0;
    for robot in &robots {
        kill_pg_connections(&db, &name).await;
        let first = token(robot).await;
        match first.status().as_u16() {
            200 => {}
            503 => {
                unavailable += 1;
                assert!(first.headers().contains_key("retry-after"));
                let body: serde_json::Value = first.json().await.unwrap();
                assert_eq!(body["error"], "temporarily_unavailable");
            }
            other => panic!("{other}: {}", first.text().await.unwrap()),
        }
        assert_eq!(token(robot).await.status(), 200);
        if unavailable > 0 {
            break;
        }
    }
    assert!(unavailable > 0, "no token request met a killed connection");
}
