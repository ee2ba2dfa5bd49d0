//! The file store: a restart within the token's life makes no fetch; a broken file is
//! survived; the file is private; a token saved for another app or API is not used.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::fake_wechat::{AppKind, FakeOptions};
use common::setup::{env, ConfigBuilder, Harness, MP_APPID, SECRET};
use common::{wait_until, wait_until_async, Http, Proxy};

const OTHER_APPID: &str = "wx00000000000000ff";

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_within_the_tokens_life_makes_no_fetch() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let dir = TempDir::new();
    let http = Http::new();
    let config = ConfigBuilder::new(&fake).mp("classic");

    let first = start(&config, &dir.file(), &http).await;
    let token = fake.current_token(MP_APPID).unwrap();
    wait_for_token_in(&dir.file(), &token).await;
    drop(first);
    let second = start(&config, &dir.file(), &http).await;

    assert_eq!(fake.token_fetches(), 1, "the restart took the saved token");
    let r = http.get(&format!("{}/cgi-bin/user/info", second.url)).await;
    assert_eq!(r.json()["errcode"], 0, "{}", r.text());
    assert_eq!(fake.requests()[0].access_tokens(), [token]);
    assert!(second.has_log("token taken from the store"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saved_token_due_for_renewal_is_fetched_anew_at_start() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let dir = TempDir::new();
    let http = Http::new();
    let first = start(&ConfigBuilder::new(&fake).mp("classic"), &dir.file(), &http).await;
    wait_for_token_in(&dir.file(), &fake.current_token(MP_APPID).unwrap()).await;
    drop(first);

    // 7200 s tokens renewed 7200 s before expiry: the saved one is already due.
    let config = ConfigBuilder::new(&fake)
        .mp("classic")
        .app_line("refresh_before_expiry_s = 7200");
    let _second = start(&config, &dir.file(), &http).await;

    assert_eq!(fake.token_fetches(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_token_file_is_reported_once_and_the_token_fetched() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let dir = TempDir::new();
    std::fs::write(dir.file(), "{\"tokens\": [ this is not json").unwrap();
    let http = Http::new();

    let proxy = start(&ConfigBuilder::new(&fake).mp("classic"), &dir.file(), &http).await;

    assert_eq!(fake.token_fetches(), 1);
    let warnings: Vec<String> = proxy
        .logs()
        .into_iter()
        .filter(|l| l.contains("WARN") && l.contains("token file"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("token file is corrupt"),
        "{warnings:?}"
    );
    let r = http.get(&format!("{}/cgi-bin/user/info", proxy.url)).await;
    assert_eq!(r.json()["errcode"], 0, "{}", r.text());
    // The next save replaces the broken file with a good one.
    wait_for_token_in(&dir.file(), &fake.current_token(MP_APPID).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_file_is_readable_by_its_owner_only_and_holds_no_secret() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let dir = TempDir::new();
    std::fs::write(dir.file(), "{\"tokens\": []}").unwrap();
    std::fs::set_permissions(dir.file(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let http = Http::new();

    let _proxy = start(&ConfigBuilder::new(&fake).mp("classic"), &dir.file(), &http).await;
    wait_for_token_in(&dir.file(), &fake.current_token(MP_APPID).unwrap()).await;

    let mode = std::fs::metadata(dir.file()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {:o}", mode & 0o777);
    let text = std::fs::read_to_string(dir.file()).unwrap();
    assert!(!text.contains(SECRET));
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["tokens.json"], "no temporary file is left");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_saved_for_another_appid_or_api_is_not_used() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    fake.add_app(AppKind::Mp, OTHER_APPID, SECRET);
    let dir = TempDir::new();
    let http = Http::new();
    let first = start(&ConfigBuilder::new(&fake).mp("classic"), &dir.file(), &http).await;
    wait_for_token_in(&dir.file(), &fake.current_token(MP_APPID).unwrap()).await;
    drop(first);

    // Same app name and file, another appid.
    let other_appid = ConfigBuilder::new(&fake).mp_app("mp", OTHER_APPID, "classic");
    let second = start(&other_appid, &dir.file(), &http).await;
    assert_eq!(fake.token_fetches_for(OTHER_APPID), 1);
    wait_for_token_in(&dir.file(), &fake.current_token(OTHER_APPID).unwrap()).await;
    drop(second);

    // Same appid, the stable API: the classic token saved for it is not used either.
    let _third = start(&ConfigBuilder::new(&fake).mp("stable"), &dir.file(), &http).await;
    assert_eq!(fake.token_fetches_for(MP_APPID), 2);
    assert_eq!(fake.token_fetches(), 3);
}

/// Starts a proxy with `config` and a file store at `file`, and waits until it is ready.
async fn start(config: &ConfigBuilder, file: &Path, http: &Http) -> Proxy {
    let text = format!(
        "{}[store]\nkind = \"file\"\npath = {:?}\n",
        config.render(),
        file.display().to_string()
    );
    let proxy = Proxy::start(&text, &env());
    let url = format!("{}/readyz", proxy.admin_url);
    wait_until_async("the proxy to be ready", Duration::from_secs(10), || {
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(&url).await.status == 200 }
    })
    .await;
    proxy
}

/// Waits until `file` holds `token` (it is written just after the token is put to use).
async fn wait_for_token_in(file: &Path, token: &str) {
    wait_until(
        "the token file to hold the token",
        Duration::from_secs(5),
        || std::fs::read_to_string(file).is_ok_and(|text| text.contains(token)),
    )
    .await;
}

/// A fresh directory for one test's token file, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wtp-store-file-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test directory");
        TempDir(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("tokens.json")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
