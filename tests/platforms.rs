//! Third-party platforms through the real binary: the ticket push (raw and
//! JSON), the component token, authorizers registered, fetched lazily,
//! renewed on a token error, rotated, revoked, and kept across a restart.

mod common;

use std::time::Duration;

use aes::Aes256;
use base64::Engine as _;
use bytes::Bytes;
use cbc::cipher::block_padding::{NoPadding, Pkcs7, RawPadding};
use cbc::cipher::{BlockEncryptMut, KeyIvInit};
use common::fake_wechat::FakeWeChat;
use common::redis::RedisServer;
use common::{wait_until, wait_until_async, write_temp, Http, Proxy};
use http::{Method, Request};
use http_body_util::Full;

const COMPONENT: &str = "wx00000000000000c0";
const SECRET: &str = "component-secret-0123456789abcdef";
const PUSH_TOKEN: &str = "pushtoken";
/// 43 characters, as the Open Platform console shows an EncodingAESKey.
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFE";
const AUTH_A: &str = "wx00000000000000a1";
const AUTH_B: &str = "wx00000000000000b2";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("SAAS_SECRET", SECRET),
        ("SAAS_PUSH_TOKEN", PUSH_TOKEN),
        ("SAAS_AES_KEY", AES_KEY),
    ]
}

fn config(fake: &FakeWeChat, store: &str) -> String {
    format!(
        r#"[proxy]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[upstream]
ca_file = {ca:?}
token_timeout_ms = 2000
token_retry_min_ms = 200
token_retry_max_ms = 1000

{store}

[platforms.saas]
component_appid = "{COMPONENT}"
secret_env = "SAAS_SECRET"
push_token_env = "SAAS_PUSH_TOKEN"
encoding_aes_key_env = "SAAS_AES_KEY"
base_url = "{base}"
min_refresh_interval_ms = 0
"#,
        ca = fake.ca_file.display().to_string(),
        base = fake.base_url,
    )
}

/// WeChat's push, built by the scheme in the test with the same crates.
fn encrypted_push(ticket: &str, appid: &str, token: &str) -> (String, String) {
    let key = base64::engine::general_purpose::STANDARD
        .decode(format!("{AES_KEY}="))
        .expect("the test key is canonical base64");
    let xml = format!(
        "<xml><AppId><![CDATA[{appid}]]></AppId><CreateTime>1413192605</CreateTime><InfoType><![CDATA[component_verify_ticket]]></InfoType><ComponentVerifyTicket><![CDATA[{ticket}]]></ComponentVerifyTicket></xml>"
    );
    let mut plain = b"0123456789abcdef".to_vec();
    plain.extend_from_slice(&(xml.len() as u32).to_be_bytes());
    plain.extend_from_slice(xml.as_bytes());
    plain.extend_from_slice(appid.as_bytes());
    let len = plain.len();
    let padded = (len / 32 + 1) * 32;
    plain.resize(padded, 0);
    Pkcs7::raw_pad(&mut plain[padded - 32..], len - (padded - 32));
    let cipher = cbc::Encryptor::<Aes256>::new_from_slices(&key, &key[..16]).expect("key");
    let encrypted = cipher
        .encrypt_padded_mut::<NoPadding>(&mut plain, padded)
        .expect("whole blocks");
    let encrypted = base64::engine::general_purpose::STANDARD.encode(encrypted);
    let (timestamp, nonce) = ("1413192605", "1320562132");
    let mut parts = [token, timestamp, nonce, encrypted.as_str()];
    parts.sort_unstable();
    let signature = common::sha1_by_python(&parts.concat());
    let body = format!(
        "<xml><AppId><![CDATA[{appid}]]></AppId><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    );
    (
        body,
        format!("msg_signature={signature}&timestamp={timestamp}&nonce={nonce}"),
    )
}

async fn send(http: &Http, method: Method, url: &str, body: &str) -> common::Resp {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    http.send(request).await
}

async fn fake() -> FakeWeChat {
    let fake = FakeWeChat::start().await;
    fake.add_platform(COMPONENT, SECRET);
    fake.add_authorizer(AUTH_A, "REFRESH-A");
    fake.add_authorizer(AUTH_B, "REFRESH-B");
    fake
}

async fn wait_ready(http: &Http, proxy: &Proxy) {
    let url = format!("{}/readyz", proxy.admin_url);
    wait_until_async("the platform to be ready", Duration::from_secs(10), || {
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(&url).await.status == 200 }
    })
    .await;
}

#[tokio::test]
async fn a_raw_push_is_accepted_a_forged_one_refused_and_component_calls_get_the_token() {
    let fake = fake().await;
    let proxy = Proxy::start(&config(&fake, ""), &env());
    let http = Http::new();

    // No ticket yet: not ready, and WeChat was asked for a push.
    let ready = http.get(&format!("{}/readyz", proxy.admin_url)).await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.text().contains("waiting for component_verify_ticket"),
        "{}",
        ready.text()
    );
    wait_until("api_start_push_ticket", Duration::from_secs(5), || {
        fake.start_push_calls() == 1
    })
    .await;

    fake.push_ticket(COMPONENT, "ticket@@@one");
    let (body, query) = encrypted_push("ticket@@@one", COMPONENT, "forged-token");
    let url = format!("{}/platforms/saas/ticket?{query}", proxy.admin_url);
    let forged = http.post(&url, "text/xml", body).await;
    assert_eq!(forged.status, 400, "{}", forged.text());
    assert!(
        forged.text().contains("msg_signature does not match"),
        "{}",
        forged.text()
    );

    let (body, query) = encrypted_push("ticket@@@one", COMPONENT, PUSH_TOKEN);
    let url = format!("{}/platforms/saas/ticket?{query}", proxy.admin_url);
    let accepted = http.post(&url, "text/xml", body).await;
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    assert_eq!(accepted.text(), "success");
    wait_ready(&http, &proxy).await;
    assert_eq!(fake.component_fetches(), 1);

    // A component API call: the client's component_access_token replaced.
    let call = http
        .post(
            &format!(
                "{}/saas/cgi-bin/component/api_get_authorizer_info?component_access_token=mine",
                proxy.url
            ),
            "application/json",
            "{}",
        )
        .await;
    call.assert_ok();
    let seen = fake.requests().pop().expect("the call reached WeChat");
    assert!(seen.token_ok, "{:?}", seen.query);
    assert!(!seen.query.unwrap_or_default().contains("=mine"));

    // SDKs' own token calls are answered here.
    let placeholder = http
        .post(
            &format!("{}/saas/cgi-bin/component/api_component_token", proxy.url),
            "application/json",
            "{}",
        )
        .await;
    assert_eq!(
        placeholder.json()["component_access_token"],
        "WECHAT_TOKEN_PROXY_PLACEHOLDER"
    );
    assert_eq!(fake.component_fetches(), 1);
}

#[tokio::test]
async fn authorizers_are_fetched_on_first_use_renewed_on_a_token_error_and_revoked_clearly() {
    let fake = fake().await;
    fake.push_ticket(COMPONENT, "ticket-json");
    let proxy = Proxy::start(&config(&fake, ""), &env());
    let http = Http::new();
    let admin = |p: &str| format!("{}{p}", proxy.admin_url);
    let pushed = send(
        &http,
        Method::POST,
        &admin("/platforms/saas/ticket"),
        r#"{"component_verify_ticket":"ticket-json"}"#,
    )
    .await;
    assert_eq!(pushed.text(), "success");
    wait_ready(&http, &proxy).await;

    let unknown = http
        .get(&format!("{}/saas/{AUTH_A}/cgi-bin/user/get", proxy.url))
        .await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.text().contains(AUTH_A), "{}", unknown.text());

    for (appid, refresh) in [(AUTH_A, "REFRESH-A"), (AUTH_B, "REFRESH-B")] {
        let put = send(
            &http,
            Method::PUT,
            &admin(&format!("/platforms/saas/authorizers/{appid}")),
            &format!(r#"{{"refresh_token":"{refresh}"}}"#),
        )
        .await;
        assert_eq!(put.status, 200, "{}", put.text());
    }
    let listed = http.get(&admin("/platforms/saas/authorizers")).await;
    assert!(!listed.text().contains("REFRESH-"), "{}", listed.text());
    assert_eq!(listed.json()[0]["state"], "idle");
    assert_eq!(
        fake.all_authorizer_fetches(),
        0,
        "nothing fetched before use"
    );

    let call = http
        .get(&format!(
            "{}/saas/{AUTH_A}/cgi-bin/user/get?access_token=x",
            proxy.url
        ))
        .await;
    call.assert_ok();
    assert_eq!(fake.authorizer_fetches(AUTH_A), 1);
    assert_eq!(fake.authorizer_fetches(AUTH_B), 0, "B is idle");
    let seen = fake.requests().pop().expect("forwarded");
    assert_eq!(seen.path, "/cgi-bin/user/get");
    assert!(seen.token_ok);

    // WeChat kills A's token: the call is refreshed and retried once.
    fake.revoke(AUTH_A);
    let call = http
        .get(&format!("{}/saas/{AUTH_A}/cgi-bin/user/get", proxy.url))
        .await;
    call.assert_ok();
    assert_eq!(fake.authorizer_fetches(AUTH_A), 2);
    // The advice fits a platform: no stable token API to move to.
    proxy
        .wait_for_log("another system is probably fetching")
        .await;
    assert!(
        !proxy.has_log("token_api = \"stable\""),
        "{:?}",
        proxy.logs()
    );

    // The account revokes the platform: a 503 naming the authorizer.
    fake.revoke_authorizer(AUTH_B);
    let call = http
        .get(&format!("{}/saas/{AUTH_B}/cgi-bin/user/get", proxy.url))
        .await;
    assert_eq!(call.status, 503, "{}", call.text());
    assert!(
        call.text().contains(AUTH_B) && call.text().contains("61023"),
        "{}",
        call.text()
    );
    let again = http
        .get(&format!("{}/saas/{AUTH_B}/cgi-bin/user/get", proxy.url))
        .await;
    assert_eq!(again.status, 503);
    assert!(
        again.text().contains("authorize the platform again"),
        "{}",
        again.text()
    );
    assert!(!proxy
        .logs()
        .iter()
        .any(|l| l.contains("REFRESH-") || l.contains(SECRET)));
}

#[tokio::test]
async fn a_restart_keeps_the_ticket_the_registry_and_rotated_refresh_tokens_in_the_file() {
    let fake = fake().await;
    fake.set_rotate_refresh_tokens(true);
    fake.add_auth_code("CODE-A", AUTH_A);
    fake.push_ticket(COMPONENT, "ticket-file");
    let dir = write_temp("platform-store", "").with_extension("d");
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("tokens.json");
    let store = format!(
        "[store]\nkind = \"file\"\npath = {:?}",
        file.display().to_string()
    );
    let http = Http::new();
    {
        let proxy = Proxy::start(&config(&fake, &store), &env());
        let admin = |p: &str| format!("{}{p}", proxy.admin_url);
        send(
            &http,
            Method::POST,
            &admin("/platforms/saas/ticket"),
            r#"{"component_verify_ticket":"ticket-file"}"#,
        )
        .await;
        wait_ready(&http, &proxy).await;
        let added = send(
            &http,
            Method::POST,
            &admin("/platforms/saas/authorizers"),
            r#"{"auth_code":"CODE-A"}"#,
        )
        .await;
        assert_eq!(added.status, 200, "{}", added.text());
        let call = http
            .get(&format!("{}/saas/{AUTH_A}/cgi-bin/user/get", proxy.url))
            .await;
        call.assert_ok();
    }
    let rotated = fake.refresh_token(AUTH_A).expect("A");
    assert_ne!(rotated, "REFRESH-A", "the fake rotated it");
    let saved = std::fs::read_to_string(&file).expect("the store file");
    assert!(
        saved.contains(&rotated),
        "the rotated refresh token is saved"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).expect("file").permissions().mode() & 0o777,
        0o600
    );

    // A new process: no push, no registration, and the token is adopted.
    let (components, fetches) = (fake.component_fetches(), fake.authorizer_fetches(AUTH_A));
    let proxy = Proxy::start(&config(&fake, &store), &env());
    wait_ready(&http, &proxy).await;
    let call = http
        .get(&format!("{}/saas/{AUTH_A}/cgi-bin/user/get", proxy.url))
        .await;
    call.assert_ok();
    assert_eq!(
        fake.component_fetches(),
        components,
        "the component token was in the file"
    );
    assert_eq!(
        fake.authorizer_fetches(AUTH_A),
        fetches,
        "the authorizer token was in the file"
    );
    // WeChat kills the token: the refetch uses the rotated refresh token.
    fake.revoke(AUTH_A);
    http.get(&format!("{}/saas/{AUTH_A}/cgi-bin/user/get", proxy.url))
        .await
        .assert_ok();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `[store]` table for `redis`.
fn redis_store(redis: &RedisServer) -> String {
    format!("[store]\nkind = \"redis\"\nurl = {:?}", redis.url())
}

/// Writes `authorizers` (appid, refresh token) straight into the platform's
/// Redis hash, pipelined, as an earlier fleet would have left them; and
/// tells the fake about each.
fn seed_registry(redis: &RedisServer, fake: &FakeWeChat, authorizers: &[(String, String)]) {
    let key = format!("wechat-token-proxy:{COMPONENT}:authorizers");
    let mut pipe = redis::pipe();
    for chunk in authorizers.chunks(1000) {
        let cmd = pipe.cmd("HSET").arg(&key).ignore();
        for (appid, refresh) in chunk {
            cmd.arg(appid).arg(refresh);
        }
    }
    let _: () = pipe.query(&mut redis.connection()).expect("HSET");
    for (appid, refresh) in authorizers {
        fake.add_authorizer(appid, refresh);
    }
}

/// The n-th test authorizer and its refresh token.
fn nth_authorizer(n: usize) -> (String, String) {
    (format!("wx{n:016}"), format!("REFRESH-{n}"))
}

/// Pushes the ticket (JSON) to `proxy` and waits until it is ready.
async fn push_ticket(http: &Http, proxy: &Proxy, ticket: &str) {
    let pushed = send(
        http,
        Method::POST,
        &format!("{}/platforms/saas/ticket", proxy.admin_url),
        &format!(r#"{{"component_verify_ticket":"{ticket}"}}"#),
    )
    .await;
    assert_eq!(pushed.text(), "success");
    wait_ready(http, proxy).await;
}

/// GETs each of `paths`, at most `width` at a time, request `i` to replica
/// `i % len`; panics on any answer that is not WeChat's success.
async fn spread(http: &Http, replicas: &[Proxy], paths: &[String], width: usize) {
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(width));
    let tasks: Vec<_> = paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let (http, limit) = (http.clone(), limit.clone());
            let url = format!("{}{path}", replicas[i % replicas.len()].url);
            tokio::spawn(async move {
                let _permit = limit.acquire().await.expect("open");
                http.get(&url).await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("request task").assert_ok();
    }
}

#[tokio::test]
async fn a_restart_keeps_the_ticket_the_registry_and_rotated_refresh_tokens_in_redis() {
    let redis = RedisServer::start();
    let fake = fake().await;
    fake.set_rotate_refresh_tokens(true);
    fake.push_ticket(COMPONENT, "ticket-redis");
    let text = config(&fake, &redis_store(&redis));
    let http = Http::new();
    {
        let proxy = Proxy::start(&text, &env());
        push_ticket(&http, &proxy, "ticket-redis").await;
        let put = send(
            &http,
            Method::PUT,
            &format!("{}/platforms/saas/authorizers/{AUTH_A}", proxy.admin_url),
            r#"{"refresh_token":"REFRESH-A"}"#,
        )
        .await;
        assert_eq!(put.status, 200, "{}", put.text());
        http.get(&format!("{}/saas/{AUTH_A}/cgi-bin/user/get", proxy.url))
            .await
            .assert_ok();
    }
    let rotated = fake.refresh_token(AUTH_A).expect("A");
    assert_ne!(rotated, "REFRESH-A", "the fake rotated it");
    let registry: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(format!("wechat-token-proxy:{COMPONENT}:authorizers"))
        .query(&mut redis.connection())
        .expect("HGETALL");
    assert_eq!(registry, vec![(AUTH_A.to_owned(), rotated.clone())]);

    // A new process: ready without a push, serving A without registration,
    // the component and authorizer tokens adopted from Redis.
    let (components, fetches, pushes) = (
        fake.component_fetches(),
        fake.authorizer_fetches(AUTH_A),
        fake.start_push_calls(),
    );
    let proxy = Proxy::start(&text, &env());
    wait_ready(&http, &proxy).await;
    http.get(&format!("{}/saas/{AUTH_A}/cgi-bin/user/get", proxy.url))
        .await
        .assert_ok();
    assert_eq!(fake.component_fetches(), components, "component token");
    assert_eq!(fake.authorizer_fetches(AUTH_A), fetches, "authorizer token");
    assert_eq!(fake.start_push_calls(), pushes, "the ticket was in Redis");
    assert_eq!(fake.authorizer_list_calls(), 0, "the registry was in Redis");
    // WeChat kills the token: the refetch works with the rotated refresh
    // token the new process read from Redis.
    fake.revoke(AUTH_A);
    http.get(&format!("{}/saas/{AUTH_A}/cgi-bin/user/get", proxy.url))
        .await
        .assert_ok();
    assert_eq!(fake.authorizer_fetches(AUTH_A), fetches + 1);
    assert!(!proxy.logs().iter().any(|l| l.contains("REFRESH-")));
}

#[tokio::test]
async fn three_replicas_sharing_redis_fetch_each_authorizers_token_once_under_concurrency() {
    let redis = RedisServer::start();
    let fake = fake().await;
    fake.push_ticket(COMPONENT, "ticket-fleet");
    let authorizers: Vec<(String, String)> = (0..4).map(nth_authorizer).collect();
    seed_registry(&redis, &fake, &authorizers);
    let text = config(&fake, &redis_store(&redis));
    let http = Http::new();
    let first = Proxy::start(&text, &env());
    push_ticket(&http, &first, "ticket-fleet").await;
    let replicas = [
        first,
        Proxy::start(&text, &env()),
        Proxy::start(&text, &env()),
    ];
    for proxy in &replicas {
        wait_ready(&http, proxy).await;
    }
    // Slow fetches: the other replicas' requests arrive while one is under
    // way and must wait for it through the fleet lock and the store.
    fake.set_token_delay(Duration::from_millis(300));
    let paths: Vec<String> = (0..240)
        .map(|i| format!("/saas/{}/cgi-bin/user/get", authorizers[i % 4].0))
        .collect();
    spread(&http, &replicas, &paths, 240).await;
    for (appid, _) in &authorizers {
        assert_eq!(fake.authorizer_fetches(appid), 1, "{appid}");
    }
    assert_eq!(fake.component_fetches(), 1);
}

/// The scale figures: 10,000 authorizers registered in Redis, three
/// replicas started on them, 1,000 of them used across the three. Prints
/// time to ready and RSS (measured, not asserted: CPU is shared) and
/// asserts one token fetch per authorizer used and none for the rest.
#[tokio::test]
async fn ten_thousand_authorizers_in_redis_three_replicas_one_fetch_per_authorizer_used() {
    const REGISTERED: usize = 10_000;
    const USED: usize = 1_000;
    let redis = RedisServer::start();
    let fake = fake().await;
    fake.push_ticket(COMPONENT, "ticket-scale");
    let authorizers: Vec<(String, String)> = (0..REGISTERED).map(nth_authorizer).collect();
    seed_registry(&redis, &fake, &authorizers);
    let text = config(&fake, &redis_store(&redis));
    let http = Http::new();

    let started = std::time::Instant::now();
    let first = Proxy::start(&text, &env());
    wait_until("the registry to load", Duration::from_secs(10), || {
        first.has_log("authorizer registry loaded")
    })
    .await;
    let loaded = started.elapsed();
    let line = first
        .logs()
        .into_iter()
        .find(|l| l.contains("authorizer registry loaded"))
        .expect("logged");
    assert!(line.contains("authorizers=10000"), "{line}");
    push_ticket(&http, &first, "ticket-scale").await;
    // The others start with the ticket and component token in Redis: their
    // time to ready is the figure that matters for a fleet restart.
    let mut ready = Vec::new();
    let mut replicas = vec![first];
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let proxy = Proxy::start(&text, &env());
        wait_ready(&http, &proxy).await;
        ready.push(started.elapsed());
        replicas.push(proxy);
    }
    let idle_rss: Vec<u64> = replicas.iter().map(Proxy::rss_kib).collect();

    // Each used authorizer is called once on every replica.
    let paths: Vec<String> = (0..USED * 3)
        .map(|i| format!("/saas/{}/cgi-bin/user/get", authorizers[i / 3].0))
        .collect();
    let calls = std::time::Instant::now();
    spread(&http, &replicas, &paths, 64).await;
    let calls = calls.elapsed();
    let rss: Vec<u64> = replicas.iter().map(Proxy::rss_kib).collect();
    let peak: Vec<u64> = replicas.iter().map(Proxy::rss_peak_kib).collect();

    let fetched: Vec<usize> = authorizers
        .iter()
        .map(|(appid, _)| fake.authorizer_fetches(appid))
        .collect();
    println!(
        "platform scale: {REGISTERED} authorizers in Redis, {USED} used across 3 replicas\n\
         - first replica: registry loaded {loaded:?} after spawn ({line})\n\
         - replicas 2 and 3 (ticket and component token in Redis): ready {ready:?} after spawn\n\
         - RSS idle {idle_rss:?} KiB, after {} calls {rss:?} KiB, peak {peak:?} KiB\n\
         - {} calls in {calls:?}\n\
         - authorizer token fetches: {} ({} authorizers fetched more than once, {} idle ones fetched)",
        paths.len(),
        paths.len(),
        fetched.iter().sum::<usize>(),
        fetched[..USED].iter().filter(|n| **n > 1).count(),
        fetched[USED..].iter().filter(|n| **n > 0).count(),
    );
    assert!(
        fetched[..USED].iter().all(|n| *n == 1),
        "one fetch per authorizer used"
    );
    assert!(
        fetched[USED..].iter().all(|n| *n == 0),
        "idle ones cost no fetch"
    );
    assert_eq!(fake.component_fetches(), 1);

    // The replicas count the same, by platform, never naming an authorizer.
    let mut counted = 0.0;
    for proxy in &replicas {
        let text = http
            .get(&format!("{}/metrics", proxy.admin_url))
            .await
            .text();
        counted += samples(
            &text,
            "wechat_proxy_authorizer_token_refreshes_total",
            "saas",
            "ok",
        );
        assert!(
            !authorizers[..USED]
                .iter()
                .any(|(appid, _)| text.contains(appid.as_str())),
            "an authorizer's appid in /metrics"
        );
    }
    assert_eq!(counted, USED as f64);
}

/// The sum of `metric`'s samples labelled with `platform` and `result`.
fn samples(text: &str, metric: &str, platform: &str, result: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| {
            l.contains(&format!("platform=\"{platform}\""))
                && l.contains(&format!("result=\"{result}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_ticket_and_an_authorizer_given_to_one_replica_serve_on_the_others() {
    let redis = RedisServer::start();
    let fake = fake().await;
    fake.push_ticket(COMPONENT, "ticket-one");
    let text = config(&fake, &redis_store(&redis));
    let http = Http::new();
    let replicas = [Proxy::start(&text, &env()), Proxy::start(&text, &env())];
    // WeChat's push reaches one replica (the load balancer picked it).
    push_ticket(&http, &replicas[0], "ticket-one").await;
    wait_ready(&http, &replicas[1]).await;
    let put = send(
        &http,
        Method::PUT,
        &format!(
            "{}/platforms/saas/authorizers/{AUTH_A}",
            replicas[0].admin_url
        ),
        r#"{"refresh_token":"REFRESH-A"}"#,
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.text());
    http.get(&format!(
        "{}/saas/{AUTH_A}/cgi-bin/user/get",
        replicas[1].url
    ))
    .await
    .assert_ok();
    assert_eq!(fake.component_fetches(), 1, "replica 2 took replica 1's");
    // WeChat kills the component token: replica 2 fetches the next one
    // itself, with the ticket replica 1 kept in Redis.
    fake.revoke(COMPONENT);
    http.post(
        &format!(
            "{}/saas/cgi-bin/component/api_get_authorizer_info",
            replicas[1].url
        ),
        "application/json",
        "{}",
    )
    .await
    .assert_ok();
    assert_eq!(fake.component_fetches(), 2);

    // The account revokes the platform; replica 1 finds out. It authorizes
    // again and the new refresh token is registered through replica 2.
    fake.revoke_authorizer(AUTH_A);
    fake.revoke(AUTH_A);
    let refused = http
        .get(&format!(
            "{}/saas/{AUTH_A}/cgi-bin/user/get",
            replicas[0].url
        ))
        .await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    fake.reauthorize(AUTH_A, "REFRESH-A2");
    let put = send(
        &http,
        Method::PUT,
        &format!(
            "{}/platforms/saas/authorizers/{AUTH_A}",
            replicas[1].admin_url
        ),
        r#"{"refresh_token":"REFRESH-A2"}"#,
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.text());
    http.get(&format!(
        "{}/saas/{AUTH_A}/cgi-bin/user/get",
        replicas[0].url
    ))
    .await
    .assert_ok();

    // B is registered through replica 1 and removed through replica 2 (the
    // unauthorization event reached it); replica 1 stops at its next fetch.
    let authorizer_b = |i: usize| {
        format!(
            "{}/platforms/saas/authorizers/{AUTH_B}",
            replicas[i].admin_url
        )
    };
    let put = send(
        &http,
        Method::PUT,
        &authorizer_b(0),
        r#"{"refresh_token":"REFRESH-B"}"#,
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.text());
    let removed = send(&http, Method::DELETE, &authorizer_b(1), "").await;
    assert_eq!(removed.status, 200, "{}", removed.text());
    let refused = http
        .get(&format!(
            "{}/saas/{AUTH_B}/cgi-bin/user/get",
            replicas[0].url
        ))
        .await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains("removed"), "{}", refused.text());
    assert_eq!(fake.authorizer_fetches(AUTH_B), 0);
}

#[tokio::test]
async fn a_refresh_token_rotated_by_one_replica_is_used_by_the_next_that_fetches() {
    let redis = RedisServer::start();
    let fake = fake().await;
    fake.set_rotate_refresh_tokens(true);
    fake.push_ticket(COMPONENT, "ticket-rotate");
    seed_registry(&redis, &fake, &[(AUTH_A.into(), "REFRESH-A".into())]);
    let text = config(&fake, &redis_store(&redis));
    let http = Http::new();
    let first = Proxy::start(&text, &env());
    push_ticket(&http, &first, "ticket-rotate").await;
    let replicas = [first, Proxy::start(&text, &env())];
    wait_ready(&http, &replicas[1]).await;
    let call = |i: usize| format!("{}/saas/{AUTH_A}/cgi-bin/user/get", replicas[i].url);

    // Replica 1 fetches; WeChat rotates the refresh token, and the old one
    // no longer works.
    http.get(&call(0)).await.assert_ok();
    assert_ne!(fake.refresh_token(AUTH_A).as_deref(), Some("REFRESH-A"));
    // WeChat kills the token; replica 2 is the one to fetch the next.
    fake.revoke(AUTH_A);
    http.get(&call(1)).await.assert_ok();
    assert_eq!(fake.authorizer_fetches(AUTH_A), 2);
    http.get(&call(0)).await.assert_ok();
}

#[tokio::test]
async fn renewal_ahead_is_one_fetch_per_lifetime_for_the_fleet_and_none_once_idle() {
    let fake = FakeWeChat::start_with(common::fake_wechat::FakeOptions {
        expires_in: 4,
        ..Default::default()
    })
    .await;
    fake.add_platform(COMPONENT, SECRET);
    fake.push_ticket(COMPONENT, "ticket-renew");
    let redis = RedisServer::start();
    let (busy, once) = (nth_authorizer(1), nth_authorizer(2));
    seed_registry(&redis, &fake, &[busy.clone(), once.clone()]);
    let text = config(&fake, &redis_store(&redis)).replace(
        "min_refresh_interval_ms = 0",
        "min_refresh_interval_ms = 0\nrefresh_before_expiry_s = 2",
    );
    let http = Http::new();
    let first = Proxy::start(&text, &env());
    push_ticket(&http, &first, "ticket-renew").await;
    let replicas = [
        first,
        Proxy::start(&text, &env()),
        Proxy::start(&text, &env()),
    ];
    for proxy in &replicas {
        wait_ready(&http, proxy).await;
    }
    let started = std::time::Instant::now();
    http.get(&format!(
        "{}/saas/{}/cgi-bin/user/get",
        replicas[0].url, once.0
    ))
    .await
    .assert_ok();
    // 6 s of steady traffic to one authorizer across the three, while its
    // 4 s tokens are renewed 2 s after each fetch.
    for i in 0..60 {
        let url = format!("{}/saas/{}/cgi-bin/user/get", replicas[i % 3].url, busy.0);
        http.get(&url).await.assert_ok();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One fetch at first use and one per renewal (plus one of slack); three
    // replicas renewing by themselves would make three per renewal.
    let renewals = (started.elapsed().as_secs_f64() / 2.0).floor() as usize;
    let fetches = fake.authorizer_fetches(&busy.0);
    assert!(
        (3..=2 + renewals).contains(&fetches),
        "{fetches} fetches in {:?}",
        started.elapsed()
    );
    // Used once at the start: renewed at most once (it was used in its
    // first life), then left alone.
    assert!(
        fake.authorizer_fetches(&once.0) <= 2,
        "{}",
        fake.authorizer_fetches(&once.0)
    );
}
