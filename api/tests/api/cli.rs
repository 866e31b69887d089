//! The `volsnap-api` binary: token commands, migrate, and refusing a stale schema.

use std::process::{Command, Output};

use sqlx::PgPool;
use volsnap_api::auth::{TOKEN_PREFIX, hash_token};

fn url_of(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    format!(
        "{server}/{}",
        pool.connect_options().get_database().unwrap()
    )
}

fn run(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_volsnap-api"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn token_create_list_revoke(pool: PgPool) {
    let url = url_of(&pool);
    let out = run(
        &url,
        &["token", "create", "--name", "ci", "--role", "viewer"],
    );
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().last().unwrap();
    assert_eq!(stdout, format!("{token}\n"), "stdout is the token alone");
    assert!(token.starts_with(TOKEN_PREFIX) && token.len() == TOKEN_PREFIX.len() + 64);
    assert!(String::from_utf8_lossy(&out.stderr).contains("shown once"));
    let (role, hash): (String, Vec<u8>) =
        sqlx::query_as("SELECT role, token_sha256 FROM api_tokens WHERE name = 'ci'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (role.as_str(), hash),
        ("viewer", hash_token(token).to_vec())
    );

    let bad = run(&url, &["token", "create", "--name", "x", "--role", "root"]);
    assert!(!bad.status.success());

    let list = run(&url, &["token", "list"]);
    let listed = String::from_utf8(list.stdout).unwrap();
    assert!(
        listed.contains(" ci") && listed.contains("viewer"),
        "{listed}"
    );
    assert!(
        !listed.contains(&token[TOKEN_PREFIX.len()..]),
        "never prints a secret"
    );

    assert!(run(&url, &["token", "revoke", "ci"]).status.success());
    let again = run(&url, &["token", "revoke", "ci"]);
    assert!(!again.status.success(), "nothing left to revoke");
    let revoked: bool =
        sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM api_tokens WHERE name = 'ci'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(revoked);
}

#[sqlx::test(migrator = "volsnap_shared::MIGRATOR")]
async fn serve_refuses_a_stale_schema_until_migrated(pool: PgPool) {
    let url = url_of(&pool);
    let (server, _) = url.rsplit_once('/').unwrap();
    let fresh = format!("volsnap_cli_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {fresh}")))
        .execute(&pool)
        .await
        .unwrap();
    let fresh_url = format!("{server}/{fresh}");

    for args in [
        &["serve", "--addr", "127.0.0.1:0"][..],
        &["--addr", "127.0.0.1:0"],
        &["token", "list"],
    ] {
        let out = run(&fresh_url, args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("run `volsnap-api migrate`"), "{args:?}: {err}");
    }
    let out = run(&fresh_url, &["migrate"]);
    assert!(out.status.success(), "{out:?}");
    let fresh_pool = PgPool::connect(&fresh_url).await.unwrap();
    assert!(
        volsnap_shared::db::schema::status(&fresh_pool)
            .await
            .unwrap()
            .is_current()
    );
    assert!(
        run(&fresh_url, &["migrate"]).status.success(),
        "migrate is idempotent"
    );
    fresh_pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {fresh} WITH (FORCE)"
    )))
    .execute(&pool)
    .await
    .unwrap();
}
