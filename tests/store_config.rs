//! The `[store]` table is validated like the rest of the config: every mistake is named by
//! key, and a Redis password never appears in a message.

mod common;

use common::setup::{SECRET, SECRET_VAR};
use common::{run_binary, write_temp};

use common::setup::APP_TOML as APP;

const PASSWORD: &str = "redis-password-never-shown-9b2e";

/// Runs `check` on `APP` plus `store`; returns (accepted, stdout + stderr).
/// `check` binds the listeners to prove them free: on port 0, so this file's
/// tests, which run at once, never race for the default 8080.
fn check(store: &str, extra_env: &[(&str, &str)]) -> (bool, String) {
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{APP}\n[store]\n{store}\n"
    );
    let path = write_temp("store.toml", &config);
    let mut env = vec![(SECRET_VAR, SECRET)];
    env.extend_from_slice(extra_env);
    let (status, out, err) = run_binary(&["check", "--config", path.to_str().unwrap()], &env);
    let _ = std::fs::remove_file(&path);
    let text = format!("{out}{err}");
    assert!(
        !text.contains(PASSWORD),
        "the Redis password was shown: {text}"
    );
    (status.success(), text)
}

fn refused(store: &str, extra_env: &[(&str, &str)], parts: &[&str]) {
    let (ok, text) = check(store, extra_env);
    assert!(!ok, "accepted:\n{store}");
    for part in parts {
        assert!(text.contains(part), "{part:?} missing in: {text}");
    }
}

#[test]
fn memory_file_and_redis_stores_are_accepted() {
    for store in [
        "kind = \"memory\"".to_owned(),
        format!(
            "kind = \"file\"\npath = {:?}",
            std::env::temp_dir().join("tokens.json")
        ),
        format!("kind = \"redis\"\nurl = \"redis://:{PASSWORD}@127.0.0.1:6379/0\""),
        "kind = \"redis\"\nurl = \"rediss://redis.internal:6380\"\nkey_prefix = \"a:\"".to_owned(),
    ] {
        let (ok, text) = check(&store, &[]);
        assert!(ok, "refused:\n{store}\n{text}");
    }
}

#[test]
fn an_unknown_store_kind_or_key_is_named() {
    refused("kind = \"memcached\"", &[], &["memcached", "`redis`"]);
    refused(
        "kind = \"redis\"\nurl = \"redis://127.0.0.1\"\nprefix = \"x\"",
        &[],
        &["unknown field `prefix`"],
    );
}

#[test]
fn a_key_of_another_store_kind_is_named() {
    refused(
        "path = \"/tmp/tokens.json\"",
        &[],
        &["store.path", "only for kind = \"file\""],
    );
    refused(
        "kind = \"file\"\npath = \"/tmp/t.json\"\nurl = \"redis://127.0.0.1\"",
        &[],
        &["store.url", "only for kind = \"redis\""],
    );
}

#[test]
fn a_file_store_needs_a_path_in_an_existing_directory() {
    refused("kind = \"file\"", &[], &["store.path", "missing"]);
    refused(
        "kind = \"file\"\npath = \"/nonexistent-dir/tokens.json\"",
        &[],
        &["store.path", "/nonexistent-dir", "does not exist"],
    );
}

#[test]
fn a_redis_store_needs_a_redis_url() {
    refused("kind = \"redis\"", &[], &["store.url", "missing"]);
    refused(
        "kind = \"redis\"\nurl_env = \"TEST_REDIS_URL\"",
        &[],
        &["store.url_env", "TEST_REDIS_URL", "not set"],
    );
    refused(
        &format!("kind = \"redis\"\nurl = \"http://:{PASSWORD}@127.0.0.1:6379\""),
        &[],
        &["store.url", "redis://", "rediss://"],
    );
}

#[test]
fn a_bad_redis_url_is_shown_without_its_password() {
    refused(
        &format!("kind = \"redis\"\nurl = \"redis://app:{PASSWORD}@127.0.0.1:6379/not-a-db\""),
        &[],
        &["store.url", "redis://app:***@127.0.0.1:6379/not-a-db"],
    );
    refused(
        "kind = \"redis\"\nurl_env = \"TEST_REDIS_URL\"",
        &[(
            "TEST_REDIS_URL",
            &format!("rediss://:{PASSWORD}@redis.internal/0#insecure"),
        )],
        &[
            "store.url_env",
            "rediss://:***@redis.internal/0",
            "#insecure",
        ],
    );
}

#[test]
fn sentinel_urls_are_checked_and_their_passwords_never_shown() {
    let (ok, text) = check(
        &format!(
            "kind = \"redis\"\nurl = \"redis-sentinel://:{PASSWORD}@10.0.0.5:26379,10.0.0.6/0#mymaster\"\nsentinel_password_env = \"TEST_SENTINEL_PASSWORD\""
        ),
        &[("TEST_SENTINEL_PASSWORD", PASSWORD)],
    );
    assert!(ok, "refused: {text}");
    refused(
        &format!("kind = \"redis\"\nurl = \"redis-sentinel://:{PASSWORD}@10.0.0.5:26379/0\""),
        &[],
        &[
            "store.url",
            "redis-sentinel://:***@10.0.0.5:26379/0",
            "#MASTER",
        ],
    );
    refused(
        "kind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nsentinel_password_env = \"X\"",
        &[],
        &["store.sentinel_password_env", "redis-sentinel://"],
    );
    refused(
        "kind = \"redis\"\nurl = \"redis-sentinel://10.0.0.5#m\"\nsentinel_password_env = \"TEST_UNSET_VARIABLE\"",
        &[],
        &["store.sentinel_password_env", "TEST_UNSET_VARIABLE"],
    );
}
