//! Third-party platforms through the real binary: the ticket push (raw and
//! JSON), the component token, authorizers registered, fetched lazily,
//! renewed on a token error, rotated, revoked, and kept across a restart.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::fake_wechat::FakeWeChat;
use common::redis::RedisServer;
use common::{
    assert_all_ok, metric_sum, spread_paths, start_ready, wait_ready, wait_until, write_temp, Http,
    Proxy,
};
use http::{Method, Request};
use http_body_util::Full;

const COMPONENT: &str = "wx00000000000000c0";
const SECRET: &str = "component-secret-0123456789abcdef";
const PUSH_TOKEN: &str = "pushtoken";
/// 43 characters, as the Open Platform console shows an EncodingAESKey.
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFE";
/// The admin key a platform requires.
const ADMIN_KEY: &str = "admin-key-0123456789abcdef";
const AUTH_A: &str = "wx00000000000000a1";
const AUTH_B: &str = "wx00000000000000b2";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("SAAS_SECRET", SECRET),
        ("SAAS_PUSH_TOKEN", PUSH_TOKEN),
        ("SAAS_AES_KEY", AES_KEY),
        ("SAAS_ADMIN_KEY", ADMIN_KEY),
    ]
}

fn config(fake: &FakeWeChat, store: &str) -> String {
    format!(
        r#"[proxy]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_key_env = "SAAS_ADMIN_KEY"

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

/// Now, in Unix seconds, as WeChat stamps its pushes.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// WeChat's ticket push, signed now.
fn encrypted_push(ticket: &str, appid: &str, token: &str) -> (String, String) {
    let fields = format!("<InfoType><![CDATA[component_verify_ticket]]></InfoType><ComponentVerifyTicket><![CDATA[{ticket}]]></ComponentVerifyTicket>");
    encrypted_event(&fields, appid, token, unix_now(), &nonce())
}

/// A nonce no other push of this test process had: WeChat's differ.
fn nonce() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    (1_320_562_132 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)).to_string()
}

/// WeChat's push of the event `fields` (InfoType and the rest), stamped
/// `timestamp`, built by the scheme in the test with the same crates.
fn encrypted_event(
    fields: &str,
    appid: &str,
    token: &str,
    timestamp: u64,
    nonce: &str,
) -> (String, String) {
    let xml = format!(
        "<xml><AppId><![CDATA[{appid}]]></AppId><CreateTime>{timestamp}</CreateTime>{fields}</xml>"
    );
    let encrypted = common::push::encrypt(&xml, appid, AES_KEY);
    let body = format!(
        "<xml><AppId><![CDATA[{appid}]]></AppId><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    );
    let query = common::push::signed_query(&encrypted, token, timestamp, nonce);
    (body, query)
}

/// An admin request, with the admin key.
async fn send(http: &Http, method: Method, url: &str, body: &str) -> common::Resp {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
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
    let forged = send(&http, Method::POST, &url, &body).await;
    assert_eq!(forged.status, 400, "{}", forged.text());
    assert!(
        forged.text().contains("msg_signature does not match"),
        "{}",
        forged.text()
    );

    let (body, query) = encrypted_push("ticket@@@one", COMPONENT, PUSH_TOKEN);
    let url = format!("{}/platforms/saas/ticket?{query}", proxy.admin_url);
    let accepted = send(&http, Method::POST, &url, &body).await;
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    assert_eq!(accepted.text(), "success");
    wait_ready(&proxy, &http).await;
    assert_eq!(fake.component_fetches(), 1);

    // A component API call: the client's component_access_token replaced.
    let call = http
        .post(
            &format!(
                "{}/saas/cgi-bin/component/api_get_authorizer_option?component_access_token=mine",
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
    // An application that decrypts pushes itself: no push keys, JSON tickets.
    let text = config(&fake, "")
        .replace("push_token_env = \"SAAS_PUSH_TOKEN\"\n", "")
        .replace("encoding_aes_key_env = \"SAAS_AES_KEY\"\n", "");
    let proxy = Proxy::start(&text, &env());
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
    wait_ready(&proxy, &http).await;

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
    let listed = admin_get(&http, &proxy, "/platforms/saas/authorizers").await;
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
        push_ticket(&http, &proxy, "ticket-file").await;
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
    wait_ready(&proxy, &http).await;
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

/// Forwards a push (`(body, query)`) to `proxy`'s ticket endpoint, as the
/// application's callback handler does.
async fn forward(http: &Http, proxy: &Proxy, (body, query): &(String, String)) -> common::Resp {
    let url = format!("{}/platforms/saas/ticket?{query}", proxy.admin_url);
    send(http, Method::POST, &url, body).await
}

/// Pushes the ticket (WeChat's raw push) to `proxy` and waits until it is
/// ready.
async fn push_ticket(http: &Http, proxy: &Proxy, ticket: &str) {
    let pushed = forward(http, proxy, &encrypted_push(ticket, COMPONENT, PUSH_TOKEN)).await;
    assert_eq!(pushed.text(), "success");
    wait_ready(proxy, http).await;
}

/// A proxy in front of `fake` (no store), given `ticket` and ready.
async fn ready_proxy(fake: &FakeWeChat, http: &Http, ticket: &str) -> Proxy {
    fake.push_ticket(COMPONENT, ticket);
    let proxy = Proxy::start(&config(fake, ""), &env());
    push_ticket(http, &proxy, ticket).await;
    proxy
}

/// `GET path` on `proxy`'s admin listener, with the key.
async fn admin_get(http: &Http, proxy: &Proxy, path: &str) -> common::Resp {
    send(http, Method::GET, &format!("{}{path}", proxy.admin_url), "").await
}

/// `PUT /platforms/saas/authorizers/APPID` on `proxy`.
async fn put_authorizer(http: &Http, proxy: &Proxy, appid: &str, refresh: &str) -> common::Resp {
    let url = format!("{}/platforms/saas/authorizers/{appid}", proxy.admin_url);
    send(
        http,
        Method::PUT,
        &url,
        &format!(r#"{{"refresh_token":"{refresh}"}}"#),
    )
    .await
}

/// `DELETE /platforms/saas/authorizers/APPID` on `proxy`, which must succeed.
async fn remove_authorizer(http: &Http, proxy: &Proxy, appid: &str) {
    let url = format!("{}/platforms/saas/authorizers/{appid}", proxy.admin_url);
    let removed = send(http, Method::DELETE, &url, "").await;
    assert_eq!(removed.status, 200, "{}", removed.text());
}

/// Three replicas on `text` (a shared store), `ticket` pushed to the first,
/// all ready.
async fn fleet(http: &Http, text: &str, ticket: &str) -> [Proxy; 3] {
    let first = Proxy::start(text, &env());
    push_ticket(http, &first, ticket).await;
    let replicas = [
        first,
        Proxy::start(text, &env()),
        Proxy::start(text, &env()),
    ];
    for proxy in &replicas {
        wait_ready(proxy, http).await;
    }
    replicas
}

#[tokio::test]
async fn a_restart_keeps_the_ticket_the_registry_and_rotated_refresh_tokens_in_redis() {
    let redis = RedisServer::start();
    let fake = fake().await;
    fake.set_rotate_refresh_tokens(true);
    fake.push_ticket(COMPONENT, "ticket-redis");
    let text = config(&fake, &redis.store_table());
    let http = Http::new();
    {
        let proxy = Proxy::start(&text, &env());
        push_ticket(&http, &proxy, "ticket-redis").await;
        let put = put_authorizer(&http, &proxy, AUTH_A, "REFRESH-A").await;
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
    wait_ready(&proxy, &http).await;
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
    let text = config(&fake, &redis.store_table());
    let http = Http::new();
    let replicas = fleet(&http, &text, "ticket-fleet").await;
    // Slow fetches: the other replicas' requests arrive while one is under
    // way and must wait for it through the fleet lock and the store.
    fake.set_token_delay(Duration::from_millis(300));
    let paths: Vec<String> = (0..240)
        .map(|i| format!("/saas/{}/cgi-bin/user/get", authorizers[i % 4].0))
        .collect();
    assert_all_ok(&spread_paths(&http, &replicas, &paths, 240).await);
    for (appid, _) in &authorizers {
        assert_eq!(fake.authorizer_fetches(appid), 1, "{appid}");
    }
    assert_eq!(fake.component_fetches(), 1);
}

/// `GET path` on `proxy`'s application listener.
async fn app_get(http: &Http, proxy: &Proxy, path: &str) -> common::Resp {
    http.get(&format!("{}{path}", proxy.url)).await
}

/// The ticket of a successful ticket answer.
fn ticket_of(answer: &common::Resp) -> String {
    answer.assert_ok();
    answer.json()["ticket"]
        .as_str()
        .expect("a ticket")
        .to_owned()
}

/// `GET /platforms/saas/authorizers`' entry for `appid`.
async fn authorizer_entry(http: &Http, proxy: &Proxy, appid: &str) -> serde_json::Value {
    let listed = admin_get(http, proxy, "/platforms/saas/authorizers").await;
    listed
        .json()
        .as_array()
        .expect("a list")
        .iter()
        .find(|a| a["appid"] == appid)
        .cloned()
        .unwrap_or_else(|| panic!("{appid} not listed: {}", listed.text()))
}

#[tokio::test]
async fn an_authorizers_js_sdk_tickets_are_held_here_and_its_pages_signed_with_its_appid() {
    let fake = fake().await;
    let http = Http::new();
    let proxy = ready_proxy(&fake, &http, "ticket-js").await;
    const AUTH_C: &str = "wx00000000000000c3";
    fake.add_authorizer(AUTH_C, "REFRESH-C");
    for (appid, refresh) in [
        (AUTH_A, "REFRESH-A"),
        (AUTH_B, "REFRESH-B"),
        (AUTH_C, "REFRESH-C"),
    ] {
        let put = put_authorizer(&http, &proxy, appid, refresh).await;
        assert_eq!(put.status, 200, "{}", put.text());
    }
    // An SDK asks with the placeholder, again and again: one fetch, with
    // A's own token (the fake names a ticket after the account it is for).
    let jsapi =
        format!("/saas/{AUTH_A}/cgi-bin/ticket/getticket?access_token=PLACEHOLDER&type=jsapi");
    let mut tickets = Vec::new();
    for _ in 0..3 {
        tickets.push(ticket_of(&app_get(&http, &proxy, &jsapi).await));
    }
    assert_eq!(fake.ticket_fetches("jsapi"), 1, "each ask reached WeChat");
    assert!(tickets.iter().all(|t| *t == tickets[0]), "{tickets:?}");
    assert!(tickets[0].contains(AUTH_A), "{}", tickets[0]);
    let card = app_get(
        &http,
        &proxy,
        &format!("/saas/{AUTH_A}/cgi-bin/ticket/getticket?type=wx_card"),
    )
    .await;
    assert_ne!(ticket_of(&card), tickets[0]);
    // B has tickets of its own.
    let b = ticket_of(
        &app_get(
            &http,
            &proxy,
            &format!("/saas/{AUTH_B}/cgi-bin/ticket/getticket?type=jsapi"),
        )
        .await,
    );
    assert!(b.contains(AUTH_B), "{b}");
    assert_eq!(fake.ticket_fetches("jsapi"), 2);

    // wx.config for A's page, signed here with A's ticket and appid.
    let config = app_get(
        &http,
        &proxy,
        &format!("/saas/{AUTH_A}/jssdk/config?url=https%3A%2F%2Fshop.example%2Fp%3Fx%3D1%23top"),
    )
    .await;
    assert_eq!(config.status, 200, "{}", config.text());
    let signed = config.json();
    assert_eq!(signed["appId"], AUTH_A, "{}", config.text());
    common::assert_signed_json(&signed, &tickets[0], "https://shop.example/p?x=1");
    assert_eq!(
        fake.ticket_fetches("jsapi"),
        2,
        "signed with the held ticket"
    );
    let agent = app_get(
        &http,
        &proxy,
        &format!("/saas/{AUTH_A}/jssdk/agent-config?url=https%3A%2F%2Fshop.example%2F"),
    )
    .await;
    assert_eq!(agent.status, 404, "{}", agent.text());

    // Status: per authorizer, and counted for the platform; C never asked
    // and holds nothing.
    let a = authorizer_entry(&http, &proxy, AUTH_A).await;
    assert_eq!(a["tickets"]["jsapi"]["state"], "valid", "{a}");
    assert_eq!(a["tickets"]["wx_card"]["state"], "valid", "{a}");
    let c = authorizer_entry(&http, &proxy, AUTH_C).await;
    assert!(c["tickets"].is_null(), "{c}");
    let platforms = admin_get(&http, &proxy, "/platforms").await;
    assert_eq!(
        platforms.json()[0]["tickets"],
        serde_json::json!({"accounts": 2, "valid": 3, "missing": 0}),
        "{}",
        platforms.text()
    );
    // Metrics name the platform, never an authorizer; no ticket is logged
    // or shown on the status pages.
    let metrics = admin_get(&http, &proxy, "/metrics").await.text();
    assert!(metrics.contains("saas"), "{metrics}");
    for appid in [AUTH_A, AUTH_B] {
        assert!(!metrics.contains(appid), "{appid} in the metrics");
    }
    let shown = admin_get(&http, &proxy, "/platforms/saas/authorizers")
        .await
        .text()
        + &platforms.text();
    assert!(!shown.contains("TICKET-"), "{shown}");
    assert!(!proxy.logs().iter().any(|l| l.contains("TICKET-")));

    // A removed authorizer's tickets go with it.
    remove_authorizer(&http, &proxy, AUTH_A).await;
    let platforms = admin_get(&http, &proxy, "/platforms").await;
    assert_eq!(
        platforms.json()[0]["tickets"]["accounts"],
        1,
        "{}",
        platforms.text()
    );
}

#[tokio::test]
async fn a_removed_authorizers_tickets_are_not_renewed_while_a_kept_ones_are() {
    let fake = FakeWeChat::start_with(common::fake_wechat::FakeOptions {
        ticket_lifetime: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    fake.add_platform(COMPONENT, SECRET);
    fake.add_authorizer(AUTH_A, "REFRESH-A");
    fake.add_authorizer(AUTH_B, "REFRESH-B");
    fake.push_ticket(COMPONENT, "ticket-renew");
    let text = config(&fake, "").replace(
        "min_refresh_interval_ms = 0",
        "min_refresh_interval_ms = 0\nrefresh_before_expiry_s = 1",
    );
    let http = Http::new();
    let proxy = Proxy::start(&text, &env());
    push_ticket(&http, &proxy, "ticket-renew").await;
    for (appid, refresh) in [(AUTH_A, "REFRESH-A"), (AUTH_B, "REFRESH-B")] {
        assert_eq!(
            put_authorizer(&http, &proxy, appid, refresh).await.status,
            200
        );
        ticket_of(
            &app_get(
                &http,
                &proxy,
                &format!("/saas/{appid}/cgi-bin/ticket/getticket?type=jsapi"),
            )
            .await,
        );
    }
    remove_authorizer(&http, &proxy, AUTH_A).await;
    let issued_for = |appid: &str| {
        fake.issued_tickets("jsapi")
            .iter()
            .filter(|t| t.contains(appid))
            .count()
    };
    // Both were asked for during their life: B's successor comes when its
    // 3 s end, without a request; A's renewal ended with A.
    wait_until("B's next ticket", Duration::from_secs(8), || {
        issued_for(AUTH_B) == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(issued_for(AUTH_A), 1, "{:?}", fake.issued_tickets("jsapi"));
}

#[tokio::test]
async fn three_replicas_sharing_redis_fetch_each_authorizers_ticket_once_stored_apart_from_apps() {
    let redis = RedisServer::start();
    let fake = fake().await;
    fake.push_ticket(COMPONENT, "ticket-fleet");
    seed_registry(
        &redis,
        &fake,
        &[
            (AUTH_A.into(), "REFRESH-A".into()),
            (AUTH_B.into(), "REFRESH-B".into()),
        ],
    );
    let text = config(&fake, &redis.store_table());
    let http = Http::new();
    let replicas = fleet(&http, &text, "ticket-fleet").await;
    for appid in [AUTH_A, AUTH_B] {
        let path = format!("/saas/{appid}/cgi-bin/ticket/getticket?type=jsapi");
        let answers = common::spread(&http, &replicas, 30, &path).await;
        let tickets: Vec<String> = answers.iter().map(ticket_of).collect();
        assert!(tickets.iter().all(|t| *t == tickets[0]), "{tickets:?}");
        let config = common::spread(
            &http,
            &replicas,
            3,
            &format!("/saas/{appid}/jssdk/config?url=https%3A%2F%2Fshop.example%2F"),
        )
        .await;
        for signed in &config {
            assert_eq!(signed.status, 200, "{}", signed.text());
            assert_eq!(signed.json()["appId"], appid);
        }
    }
    assert_eq!(
        fake.ticket_fetches("jsapi"),
        2,
        "one fetch per authorizer for the fleet"
    );
    // Kept under the platform: never where an app of the same account, or
    // another platform's authorizer, keeps its ticket.
    for appid in [AUTH_A, AUTH_B] {
        let ours = format!("wechat-token-proxy:{appid}:ticket_jsapi@{COMPONENT}:token");
        assert!(redis.get(&ours).is_some(), "{:?}", redis.keys("*"));
        let apps = format!("wechat-token-proxy:{appid}:ticket_jsapi:token");
        assert!(redis.get(&apps).is_none(), "{:?}", redis.keys("*"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readmes_wechatpy_snippet_gets_an_authorizers_ticket_and_its_signed_config() {
    let fake = fake().await;
    let http = Http::new();
    let proxy = ready_proxy(&fake, &http, "ticket-readme").await;
    let put = put_authorizer(&http, &proxy, AUTH_A, "REFRESH-A").await;
    assert_eq!(put.status, 200, "{}", put.text());

    let snippet = common::readme_python("8080/saas/", &proxy.addr.to_string());
    let stdout = common::run_python(&snippet).await;
    let ticket = fake.issued_tickets("jsapi").pop().expect("a ticket");
    assert!(ticket.contains(AUTH_A), "{ticket}");
    assert_eq!(fake.ticket_fetches("jsapi"), 1, "one fetch for both");
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(ticket.as_str()), "{stdout}");
    let printed = lines.next().expect("the signed config");
    assert!(
        printed.contains(&format!("'appId': '{AUTH_A}'")),
        "{printed}"
    );
    common::assert_signed_printed(printed, &ticket, "https://shop.example/item?id=1");
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
    let text = config(&fake, &redis.store_table());
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
        let (proxy, took) = start_ready(&text, &env(), &http).await;
        ready.push(took);
        replicas.push(proxy);
    }
    let idle_rss: Vec<u64> = replicas.iter().map(Proxy::rss_kib).collect();

    // Each used authorizer is called once on every replica.
    let paths: Vec<String> = (0..USED * 3)
        .map(|i| format!("/saas/{}/cgi-bin/user/get", authorizers[i / 3].0))
        .collect();
    let calls = std::time::Instant::now();
    assert_all_ok(&spread_paths(&http, &replicas, &paths, 64).await);
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
        let text = admin_get(&http, proxy, "/metrics").await.text();
        counted += metric_sum(
            &text,
            "wechat_proxy_authorizer_token_refreshes_total",
            &[("platform", "saas"), ("result", "ok")],
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

#[tokio::test]
async fn a_ticket_and_an_authorizer_given_to_one_replica_serve_on_the_others() {
    let redis = RedisServer::start();
    let fake = fake().await;
    fake.push_ticket(COMPONENT, "ticket-one");
    let text = config(&fake, &redis.store_table());
    let http = Http::new();
    let replicas = [Proxy::start(&text, &env()), Proxy::start(&text, &env())];
    // WeChat's push reaches one replica (the load balancer picked it).
    push_ticket(&http, &replicas[0], "ticket-one").await;
    wait_ready(&replicas[1], &http).await;
    let put = put_authorizer(&http, &replicas[0], AUTH_A, "REFRESH-A").await;
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
            "{}/saas/cgi-bin/component/api_get_authorizer_option",
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
    let put = put_authorizer(&http, &replicas[1], AUTH_A, "REFRESH-A2").await;
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
    let text = config(&fake, &redis.store_table());
    let http = Http::new();
    let first = Proxy::start(&text, &env());
    push_ticket(&http, &first, "ticket-rotate").await;
    let replicas = [first, Proxy::start(&text, &env())];
    wait_ready(&replicas[1], &http).await;
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
    let text = config(&fake, &redis.store_table()).replace(
        "min_refresh_interval_ms = 0",
        "min_refresh_interval_ms = 0\nrefresh_before_expiry_s = 2",
    );
    let http = Http::new();
    let replicas = fleet(&http, &text, "ticket-renew").await;
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

#[test]
fn a_platform_without_an_admin_key_is_refused_at_start() {
    let text = "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n\
                [platforms.saas]\ncomponent_appid = \"wx00000000000000c0\"\nsecret_env = \"SAAS_SECRET\"\n";
    let file = write_temp("platform-no-admin-key.toml", text);
    let path = file.display().to_string();
    let (status, _, stderr) = common::run_binary(&["check", "--config", &path], &env());
    assert_eq!(status.code(), Some(2), "{stderr}");
    for part in [path.as_str(), "proxy.admin_key_env", "platforms.saas"] {
        assert!(stderr.contains(part), "{part:?} missing in: {stderr}");
    }
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn platform_writes_need_the_admin_key_and_a_json_ticket_is_refused_with_push_keys() {
    let fake = fake().await;
    let http = Http::new();
    let proxy = ready_proxy(&fake, &http, "ticket-signed").await;
    let put = put_authorizer(&http, &proxy, AUTH_A, "REFRESH-A").await;
    assert_eq!(put.status, 200, "{}", put.text());

    // Without the key: no write, whatever the endpoint.
    let authorizer = format!("{}/platforms/saas/authorizers/{AUTH_A}", proxy.admin_url);
    for (method, url, body) in [
        (
            Method::PUT,
            authorizer.clone(),
            r#"{"refresh_token":"STOLEN"}"#,
        ),
        (Method::DELETE, authorizer.clone(), ""),
        (
            Method::POST,
            format!("{}/platforms/saas/authorizers", proxy.admin_url),
            r#"{"auth_code":"CODE"}"#,
        ),
        (
            Method::POST,
            format!("{}/platforms/saas/ticket", proxy.admin_url),
            r#"{"component_verify_ticket":"forged"}"#,
        ),
    ] {
        let request = Request::builder()
            .method(method.clone())
            .uri(&url)
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let refused = http.send(request).await;
        assert_eq!(refused.status, 401, "{method} {url}: {}", refused.text());
    }
    // With the key, but push keys are set: only WeChat's signed push.
    let json = send(
        &http,
        Method::POST,
        &format!("{}/platforms/saas/ticket", proxy.admin_url),
        r#"{"component_verify_ticket":"forged"}"#,
    )
    .await;
    assert_eq!(json.status, 403, "{}", json.text());
    assert!(json.text().contains("signed push"), "{}", json.text());

    // The ticket and the authorizer are as they were: the component token is
    // fetched again with the signed ticket, A served with its refresh token.
    fake.revoke(COMPONENT);
    http.get(&format!("{}/saas/{AUTH_A}/cgi-bin/user/get", proxy.url))
        .await
        .assert_ok();
    assert_eq!(fake.component_fetches(), 2);
}

#[tokio::test]
async fn a_replayed_stale_or_older_push_is_refused_and_never_rolls_the_ticket_back() {
    let fake = fake().await;
    let proxy = Proxy::start(&config(&fake, ""), &env());
    let http = Http::new();
    let ticket = |t: &str| {
        format!("<InfoType>component_verify_ticket</InfoType><ComponentVerifyTicket>{t}</ComponentVerifyTicket>")
    };
    let now = unix_now();
    fake.push_ticket(COMPONENT, "ticket-new");
    let current = encrypted_event(&ticket("ticket-new"), COMPONENT, PUSH_TOKEN, now, &nonce());
    let pushed = forward(&http, &proxy, &current).await;
    assert_eq!(pushed.text(), "success");
    wait_ready(&proxy, &http).await;

    // The same push again: a replay.
    let replay = forward(&http, &proxy, &current).await;
    assert_eq!(replay.status, 409, "{}", replay.text());
    // A genuine push recorded eleven minutes ago.
    let stale = encrypted_event(
        &ticket("ticket-stale"),
        COMPONENT,
        PUSH_TOKEN,
        now - 660,
        &nonce(),
    );
    let refused = forward(&http, &proxy, &stale).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(
        refused.text().contains("s away from this host's clock"),
        "{}",
        refused.text()
    );
    // A genuine push a minute older than the one held, arriving late: taken
    // from WeChat, but the newer ticket stays.
    let late = encrypted_event(
        &ticket("ticket-late"),
        COMPONENT,
        PUSH_TOKEN,
        now - 60,
        &nonce(),
    );
    assert_eq!(forward(&http, &proxy, &late).await.text(), "success");
    // WeChat's other notifications to the same URL are answered as WeChat
    // expects, and left to the application.
    let other = encrypted_event(
        "<InfoType>notify_third_fasteregister</InfoType><appid>wx1</appid>",
        COMPONENT,
        PUSH_TOKEN,
        now,
        &nonce(),
    );
    assert_eq!(forward(&http, &proxy, &other).await.text(), "success");

    // The next component token is fetched with the newest ticket.
    fake.revoke(COMPONENT);
    http.post(
        &format!(
            "{}/saas/cgi-bin/component/api_get_authorizer_option",
            proxy.url
        ),
        "application/json",
        "{}",
    )
    .await
    .assert_ok();
    assert_eq!(fake.component_fetches(), 2);
}

#[tokio::test]
async fn registering_over_an_authorizer_checks_the_new_refresh_token_with_wechat_first() {
    let fake = fake().await;
    let http = Http::new();
    let proxy = ready_proxy(&fake, &http, "ticket-put").await;
    let call = format!("{}/saas/{AUTH_A}/cgi-bin/user/get", proxy.url);
    let put = put_authorizer(&http, &proxy, AUTH_A, "REFRESH-A").await;
    assert_eq!(put.status, 200, "{}", put.text());
    http.get(&call).await.assert_ok();

    let wrong = put_authorizer(&http, &proxy, AUTH_A, "TYPO").await;
    assert_eq!(wrong.status, 400, "{}", wrong.text());
    assert!(
        wrong.text().contains("61023") && wrong.text().contains("kept"),
        "{}",
        wrong.text()
    );
    assert!(!wrong.text().contains("TYPO"), "{}", wrong.text());
    // WeChat kills A's token: the refetch still has the working refresh token.
    fake.revoke(AUTH_A);
    http.get(&call).await.assert_ok();

    // The account authorizes again: the new refresh token is checked and
    // taken.
    fake.reauthorize(AUTH_A, "REFRESH-A2");
    let put = put_authorizer(&http, &proxy, AUTH_A, "REFRESH-A2").await;
    assert_eq!(put.status, 200, "{}", put.text());
    fake.revoke(AUTH_A);
    http.get(&call).await.assert_ok();
}

#[tokio::test]
async fn authorizer_list_and_info_answers_carry_placeholders_for_refresh_tokens() {
    let fake = fake().await;
    let http = Http::new();
    let proxy = ready_proxy(&fake, &http, "ticket-list").await;
    let component = |api: &str| format!("{}/saas/cgi-bin/component/{api}", proxy.url);

    let list = http
        .post(
            &component("api_get_authorizer_list?component_access_token=x"),
            "application/json",
            format!(r#"{{"component_appid":"{COMPONENT}","offset":0,"count":500}}"#),
        )
        .await;
    assert_eq!(list.status, 200, "{}", list.text());
    let listed = list.json();
    assert_eq!(listed["total_count"], 2);
    assert_eq!(listed["list"][0]["authorizer_appid"], AUTH_A);
    for entry in listed["list"].as_array().expect("a list") {
        assert_eq!(entry["refresh_token"], "WECHAT_TOKEN_PROXY_PLACEHOLDER");
    }
    let info = http
        .post(
            &component("api_get_authorizer_info"),
            "application/json",
            format!(r#"{{"component_appid":"{COMPONENT}","authorizer_appid":"{AUTH_B}"}}"#),
        )
        .await;
    assert_eq!(info.status, 200, "{}", info.text());
    assert_eq!(info.json()["authorizer_info"]["nick_name"], "shop");
    assert_eq!(
        info.json()["authorization_info"]["authorizer_refresh_token"],
        "WECHAT_TOKEN_PROXY_PLACEHOLDER"
    );
    for answer in [&list, &info] {
        assert!(!answer.text().contains("REFRESH-"), "{}", answer.text());
        for token in fake.issued_tokens() {
            assert!(!answer.text().contains(&token), "{}", answer.text());
        }
    }
}

/// `n` authorizers with refresh tokens as long as WeChat's, so that a page
/// of 500 is as large as WeChat's (~75 KB).
fn authorizers_of_wechats_size(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let (appid, _) = nth_authorizer(i);
            let refresh = format!("refreshtoken@@@{i:08}{}", "x".repeat(64));
            (appid, refresh)
        })
        .collect()
}

/// A fake whose platform has `n` authorizers listed besides A and B, its
/// ticket pushed, every page of the list answered after `delay`.
async fn listing(n: usize, ticket: &str, delay: Duration) -> (FakeWeChat, Vec<(String, String)>) {
    let fake = fake().await;
    let authorizers = authorizers_of_wechats_size(n);
    for (appid, refresh) in &authorizers {
        fake.add_authorizer(appid, refresh);
    }
    fake.push_ticket(COMPONENT, ticket);
    fake.set_list_delay(delay);
    (fake, authorizers)
}

/// While a recovery reads the list: removes the 8th authorizer through
/// `proxy`, and has the 4th authorize again and registered through it
/// (the first page, already read, holds its old refresh token). Their
/// appids.
async fn remove_and_register_again(
    http: &Http,
    proxy: &Proxy,
    fake: &FakeWeChat,
    authorizers: &[(String, String)],
) -> (String, String) {
    let (removed, again) = (authorizers[7].0.clone(), authorizers[3].0.clone());
    remove_authorizer(http, proxy, &removed).await;
    fake.reauthorize(&again, "REFRESH-AGAIN");
    let put = put_authorizer(http, proxy, &again, "REFRESH-AGAIN").await;
    assert_eq!(put.status, 200, "{}", put.text());
    (removed, again)
}

/// After a recovery: `removed` gets 404 through `proxy`, and each of
/// `serving` (the last page's authorizer, the one registered again with
/// the refresh token it was given) is served.
async fn serves_as_recovered(http: &Http, proxy: &Proxy, removed: &str, serving: &[&str]) {
    let gone = http
        .get(&format!("{}/saas/{removed}/cgi-bin/user/get", proxy.url))
        .await;
    assert_eq!(gone.status, 404, "{}", gone.text());
    for appid in serving {
        http.get(&format!("{}/saas/{appid}/cgi-bin/user/get", proxy.url))
            .await
            .assert_ok();
    }
}

#[tokio::test]
async fn recovery_reads_pages_of_wechats_size_and_undoes_no_removal_or_registration_made_meanwhile()
{
    // Slow pages: the removal arrives while the list is read.
    let (fake, authorizers) = listing(1200, "ticket-recover", Duration::from_millis(500)).await;
    let dir = write_temp("platform-recover", "").with_extension("d");
    std::fs::create_dir_all(&dir).expect("dir");
    let store = format!(
        "[store]\nkind = \"file\"\npath = {:?}",
        dir.join("tokens.json").display().to_string()
    );
    let proxy = Proxy::start(&config(&fake, &store), &env());
    let http = Http::new();
    push_ticket(&http, &proxy, "ticket-recover").await;
    wait_until("the list to be read", Duration::from_secs(10), || {
        fake.authorizer_list_calls() >= 1
    })
    .await;
    let (removed, again) = remove_and_register_again(&http, &proxy, &fake, &authorizers).await;
    let recovered = proxy.wait_for_log("authorizer registry recovered").await;
    assert!(recovered.contains("authorizers=1200"), "{recovered}");
    let listed = admin_get(&http, &proxy, "/platforms/saas/authorizers")
        .await
        .json();
    // The 1,200 and A and B of `fake()`, less the one removed.
    assert_eq!(listed.as_array().map(Vec::len), Some(1201));
    assert!(!listed.to_string().contains(removed.as_str()));
    serves_as_recovered(&http, &proxy, &removed, &[&authorizers[1199].0, &again]).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_recovery_undoes_no_removal_or_registration_made_through_another_replica() {
    let redis = RedisServer::start();
    // Slow pages: the second replica starts, removes and registers while
    // the first still reads the list.
    let (fake, authorizers) = listing(1200, "ticket-fleet", Duration::from_millis(800)).await;
    let text = config(&fake, &redis.store_table());
    let http = Http::new();
    let first = Proxy::start(&text, &env());
    push_ticket(&http, &first, "ticket-fleet").await;
    wait_until("the list to be read", Duration::from_secs(10), || {
        fake.authorizer_list_calls() >= 1
    })
    .await;
    let second = Proxy::start(&text, &env());
    wait_ready(&second, &http).await;
    let (removed, again) = remove_and_register_again(&http, &second, &fake, &authorizers).await;
    let (removed, again) = (removed.as_str(), again.as_str());
    for proxy in [&first, &second] {
        proxy.wait_for_log("authorizer registry recovered").await;
    }

    let registry = |appid: &str| -> Option<String> {
        redis::cmd("HGET")
            .arg(format!("wechat-token-proxy:{COMPONENT}:authorizers"))
            .arg(appid)
            .query(&mut redis.connection())
            .expect("HGET")
    };
    assert_eq!(registry(removed), None, "the removal was undone");
    assert_eq!(registry(again).as_deref(), Some("REFRESH-AGAIN"));
    assert!(registry(&authorizers[1199].0).is_some());
    for proxy in [&first, &second] {
        serves_as_recovered(&http, proxy, removed, &[&authorizers[1199].0, again]).await;
    }
    // Registered again, it is no longer removed: a later recovery keeps it.
    let put = put_authorizer(&http, &first, removed, &authorizers[7].1).await;
    assert_eq!(put.status, 200, "{}", put.text());
    let tombstone: bool = redis::cmd("HEXISTS")
        .arg(format!("wechat-token-proxy:{COMPONENT}:removed"))
        .arg(removed)
        .query(&mut redis.connection())
        .expect("HEXISTS");
    assert!(!tombstone);
}

#[tokio::test]
async fn a_refresh_token_rotated_after_another_replica_removed_the_authorizer_brings_it_not_back() {
    let redis = RedisServer::start();
    let fake = fake().await;
    fake.push_ticket(COMPONENT, "ticket-rotate");
    let text = config(&fake, &redis.store_table());
    let http = Http::new();
    let first = Proxy::start(&text, &env());
    push_ticket(&http, &first, "ticket-rotate").await;
    let put = put_authorizer(&http, &first, AUTH_A, "REFRESH-A").await;
    assert_eq!(put.status, 200, "{}", put.text());
    let second = Proxy::start(&text, &env());
    wait_ready(&second, &http).await;
    // The first replica's fetch of A's token is under way, and will come
    // back with a new refresh token, when the second removes A.
    fake.set_rotate_refresh_tokens(true);
    fake.set_token_delay(Duration::from_millis(1500));
    let sent = fake.authorizer_token_arrivals();
    let call = {
        // A client of its own: the removal must not queue behind the call.
        let calls = Http::new();
        let url = format!("{}/saas/{AUTH_A}/cgi-bin/user/get", first.url);
        tokio::spawn(async move { calls.get(&url).await })
    };
    wait_until(
        "the token fetch to be sent",
        Duration::from_secs(10),
        || fake.authorizer_token_arrivals() > sent,
    )
    .await;
    remove_authorizer(&http, &second, AUTH_A).await;
    let answered = call.await.expect("the call");
    assert_ne!(answered.status, 200, "{}", answered.text());

    let registered: Option<String> = redis::cmd("HGET")
        .arg(format!("wechat-token-proxy:{COMPONENT}:authorizers"))
        .arg(AUTH_A)
        .query(&mut redis.connection())
        .expect("HGET");
    assert_eq!(
        registered, None,
        "the rotation brought the removed authorizer back"
    );
    let tombstone: bool = redis::cmd("HEXISTS")
        .arg(format!("wechat-token-proxy:{COMPONENT}:removed"))
        .arg(AUTH_A)
        .query(&mut redis.connection())
        .expect("HEXISTS");
    assert!(tombstone);
    let later = http
        .get(&format!("{}/saas/{AUTH_A}/cgi-bin/user/get", second.url))
        .await;
    assert_eq!(later.status, 404, "{}", later.text());
}

#[tokio::test]
async fn access_lines_name_the_platform_never_the_authorizer() {
    let fake = fake().await;
    let http = Http::new();
    let proxy = ready_proxy(&fake, &http, "ticket-log").await;
    put_authorizer(&http, &proxy, AUTH_A, "REFRESH-A").await;
    http.get(&format!("{}/saas/{AUTH_A}/cgi-bin/user/get", proxy.url))
        .await
        .assert_ok();
    // An unknown one too: the line must not name it either.
    let unknown = http
        .get(&format!("{}/saas/{AUTH_B}/cgi-bin/user/get", proxy.url))
        .await;
    assert_eq!(unknown.status, 404);
    let line = proxy
        .wait_for_log("path=\"/saas/{authorizer}/cgi-bin/user/get\" status=404")
        .await;
    assert!(line.contains("app=\"saas\""), "{line}");
    let access: Vec<String> = proxy
        .logs()
        .into_iter()
        .filter(|l| l.contains("wechat_token_proxy::access"))
        .collect();
    assert_eq!(access.len(), 2, "{access:#?}");
    for line in &access {
        assert!(
            !line.contains(AUTH_A) && !line.contains(AUTH_B),
            "an access line names an authorizer: {line}"
        );
    }
}

/// An application's platform code on wechatpy's `WeChatComponent`,
/// unmodified but for its base URL: `parse` hands it WeChat's push (as its
/// callback handler does), `query` calls `query_auth` with a code. Prints
/// what wechatpy got, as JSON.
const WECHATPY_COMPONENT: &str = r#"
import json, sys
from wechatpy.component import WeChatComponent

base, appid, token, aes_key, mode = sys.argv[1:6]
component = WeChatComponent(appid, "not-the-secret", token, aes_key)
component.API_BASE_URL = base + "/saas/cgi-bin"
if mode == "parse":
    body, signature, timestamp, nonce = sys.argv[6:10]
    message = component.parse_message(body, signature, timestamp, nonce)
    result = message.query_auth_result
else:
    result = component.query_auth(sys.argv[6])
print(json.dumps({"result": result, "session": component.session._data}, default=str))
"#;

/// Runs [`WECHATPY_COMPONENT`] against `proxy` with `args` after the mode.
async fn wechatpy_component(proxy: &Proxy, mode: &str, args: &[&str]) -> serde_json::Value {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("tests/readme/.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run .ci/test, which installs wechatpy",
        python.display()
    );
    let script = write_temp("wechatpy-component.py", WECHATPY_COMPONENT);
    let mut command = std::process::Command::new(python);
    command
        .arg(&script)
        .args([proxy.url.as_str(), COMPONENT, PUSH_TOKEN, AES_KEY, mode])
        .args(args)
        // Fails any connection that goes around the proxy.
        .env("PYTHONPATH", root.join("tests/readme/python"));
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run python");
    let _ = std::fs::remove_file(script);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "wechatpy failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// A query parameter of a push's query string.
fn query_param<'q>(query: &'q str, name: &str) -> &'q str {
    query
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{name} in {query}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn wechatpys_platform_flow_registers_each_code_once_and_never_sees_a_live_token() {
    let fake = fake().await;
    fake.add_auth_code("CODE-A", AUTH_A);
    fake.add_auth_code("CODE-B", AUTH_B);
    let http = Http::new();
    let proxy = ready_proxy(&fake, &http, "ticket-sdk").await;
    let authorized = |appid: &str, code: &str| {
        let fields = format!("<InfoType><![CDATA[authorized]]></InfoType><AuthorizerAppid><![CDATA[{appid}]]></AuthorizerAppid><AuthorizationCode><![CDATA[{code}]]></AuthorizationCode><AuthorizationCodeExpiredTime>{}</AuthorizationCodeExpiredTime><PreAuthCode><![CDATA[preauthcode@@@x]]></PreAuthCode>", unix_now() + 3600);
        encrypted_event(&fields, COMPONENT, PUSH_TOKEN, unix_now(), &nonce())
    };
    let placeholder = "WECHAT_TOKEN_PROXY_PLACEHOLDER";

    // A's push reaches the application first: wechatpy's parse_message calls
    // api_query_auth through the proxy, which exchanges and registers.
    let push_a = authorized(AUTH_A, "CODE-A");
    let (body, query) = &push_a;
    let got = wechatpy_component(
        &proxy,
        "parse",
        &[
            body,
            query_param(query, "msg_signature"),
            query_param(query, "timestamp"),
            query_param(query, "nonce"),
        ],
    )
    .await;
    let info = &got["result"]["authorization_info"];
    assert_eq!(info["authorizer_appid"], AUTH_A, "{got}");
    assert_eq!(info["authorizer_access_token"], placeholder, "{got}");
    assert_eq!(info["authorizer_refresh_token"], placeholder, "{got}");
    // The account is served at once.
    http.get(&format!("{}/saas/{AUTH_A}/cgi-bin/user/get", proxy.url))
        .await
        .assert_ok();
    // Then the handler forwards the same push: no second exchange.
    assert_eq!(forward(&http, &proxy, &push_a).await.text(), "success");
    let again = send(
        &http,
        Method::POST,
        &format!("{}/platforms/saas/authorizers", proxy.admin_url),
        r#"{"auth_code":"CODE-A"}"#,
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(fake.query_auth_calls(), 1);

    // B's push reaches the proxy first, then wechatpy asks with the code.
    assert_eq!(
        forward(&http, &proxy, &authorized(AUTH_B, "CODE-B"))
            .await
            .text(),
        "success"
    );
    wait_until("B's code exchanged", Duration::from_secs(10), || {
        fake.query_auth_calls() == 2
    })
    .await;
    let got_b = wechatpy_component(&proxy, "query", &["CODE-B"]).await;
    let info = &got_b["result"]["authorization_info"];
    assert_eq!(info["authorizer_appid"], AUTH_B, "{got_b}");
    assert_eq!(info["authorizer_refresh_token"], placeholder, "{got_b}");
    assert_eq!(fake.query_auth_calls(), 2, "one exchange per code");
    http.get(&format!("{}/saas/{AUTH_B}/cgi-bin/user/get", proxy.url))
        .await
        .assert_ok();

    // Nothing wechatpy holds is live.
    for seen in [got.to_string(), got_b.to_string()] {
        assert!(!seen.contains("REFRESH-"), "{seen}");
        for token in fake.issued_tokens() {
            assert!(!seen.contains(&token), "{seen}");
        }
    }

    // B withdraws: the "unauthorized" push removes it.
    let fields =
        format!("<InfoType>unauthorized</InfoType><AuthorizerAppid>{AUTH_B}</AuthorizerAppid>");
    let push = encrypted_event(&fields, COMPONENT, PUSH_TOKEN, unix_now(), &nonce());
    assert_eq!(forward(&http, &proxy, &push).await.text(), "success");
    let gone = http
        .get(&format!("{}/saas/{AUTH_B}/cgi-bin/user/get", proxy.url))
        .await;
    assert_eq!(gone.status, 404, "{}", gone.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_authorization_code_pushed_to_one_replica_is_answered_on_another_without_a_second_exchange(
) {
    let redis = RedisServer::start();
    let fake = fake().await;
    fake.add_auth_code("CODE-A", AUTH_A);
    fake.push_ticket(COMPONENT, "ticket-fleet-code");
    let text = config(&fake, &redis.store_table());
    let http = Http::new();
    let replicas = [Proxy::start(&text, &env()), Proxy::start(&text, &env())];
    push_ticket(&http, &replicas[0], "ticket-fleet-code").await;
    wait_ready(&replicas[1], &http).await;

    // WeChat's push reaches replica 1, which exchanges the code...
    let fields = "<InfoType>authorized</InfoType><AuthorizerAppid>wx00000000000000a1</AuthorizerAppid><AuthorizationCode>CODE-A</AuthorizationCode>";
    let push = encrypted_event(fields, COMPONENT, PUSH_TOKEN, unix_now(), &nonce());
    assert_eq!(forward(&http, &replicas[0], &push).await.text(), "success");
    wait_until("the code exchanged", Duration::from_secs(10), || {
        fake.query_auth_calls() == 1
    })
    .await;
    // ...and the application's SDK asks replica 2 with the same code.
    let got = wechatpy_component(&replicas[1], "query", &["CODE-A"]).await;
    let info = &got["result"]["authorization_info"];
    assert_eq!(info["authorizer_appid"], AUTH_A, "{got}");
    assert_eq!(
        info["authorizer_refresh_token"], "WECHAT_TOKEN_PROXY_PLACEHOLDER",
        "{got}"
    );
    assert_eq!(fake.query_auth_calls(), 1, "one exchange for the fleet");
    http.get(&format!(
        "{}/saas/{AUTH_A}/cgi-bin/user/get",
        replicas[1].url
    ))
    .await
    .assert_ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_code_asked_for_by_the_push_and_many_callers_at_once_reaches_wechat_once() {
    let fake = fake().await;
    fake.add_auth_code("CODE-A", AUTH_A);
    let http = Http::new();
    let proxy = ready_proxy(&fake, &http, "ticket-race").await;
    // A slow exchange: every asker arrives while it is under way.
    fake.set_token_delay(Duration::from_millis(300));
    let fields = format!("<InfoType>authorized</InfoType><AuthorizerAppid>{AUTH_A}</AuthorizerAppid><AuthorizationCode>CODE-A</AuthorizationCode>");
    let push = encrypted_event(&fields, COMPONENT, PUSH_TOKEN, unix_now(), &nonce());
    let url = format!("{}/saas/cgi-bin/component/api_query_auth", proxy.url);
    let body = format!(r#"{{"component_appid":"{COMPONENT}","authorization_code":"CODE-A"}}"#);
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (http, url, body) = (http.clone(), url.clone(), body.clone());
            tokio::spawn(async move { http.post(&url, "application/json", body).await })
        })
        .collect();
    assert_eq!(forward(&http, &proxy, &push).await.text(), "success");
    for caller in callers {
        let answer = caller.await.expect("caller");
        assert_eq!(answer.status, 200, "{}", answer.text());
        let info = &answer.json()["authorization_info"];
        assert_eq!(info["authorizer_appid"], AUTH_A, "{}", answer.text());
        assert_eq!(
            info["authorizer_refresh_token"],
            "WECHAT_TOKEN_PROXY_PLACEHOLDER"
        );
    }
    assert_eq!(fake.query_auth_calls(), 1);
}
