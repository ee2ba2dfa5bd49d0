//! WeCom service providers through the real binary, against a fake WeCom
//! suite server: WeCom's encrypted 指令回调 pushes (ticket, installs,
//! uninstalls, the URL check, forgeries and replays), the suite, provider
//! and corp tokens, the corp registry, the app listener's suite and corp
//! routes, customized apps, and corps' JS-SDK tickets.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fake_wechat::{AppKind, FakeWeChat};
use common::push::{encrypt, signed_query, unix_now};
use common::redis::RedisServer;
use common::{
    assert_all_ok, metric_sum, run_binary, spread_paths, start_ready, wait_ready, wait_until_async,
    write_temp, Proxy,
};
use http::{Method, Request};
use http_body_util::Full;

const SUITE: &str = "ww5f3c1a2b3c4d5e6f";
const DK_SUITE: &str = "dk8b0d4b43c0fa6a31";
const SUITE_SECRET: &str = "suite-secret-0123456789abcdef";
const PUSH_TOKEN: &str = "wecompushtoken";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFE";
const PROVIDER: &str = "ww00000000000000f0";
const PROVIDER_SECRET: &str = "provider-secret-0123456789";
/// Corp ids are case-sensitive: these two differ only in case.
const CORP_A: &str = "wwCorpA0000000001";
const CORP_A_LOWER: &str = "wwcorpa0000000001";
const CORP_B: &str = "wwCorpB0000000002";
const CODE_A: &str = "PERMANENT-CODE-A-secret";
const CODE_B: &str = "PERMANENT-CODE-B-secret";

const ADMIN_KEY: &str = "admin-key-0123456789abcdef";

/// The harness's client, presenting the admin key on every request: a
/// platform's admin endpoints need it (the application listener ignores it).
#[derive(Clone)]
struct Http(common::Http);

impl Http {
    fn new() -> Http {
        Http(common::Http::new())
    }

    async fn get(&self, url: &str) -> common::Resp {
        self.with_key(Method::GET, url, "text/plain", Bytes::new())
            .await
    }

    async fn post(&self, url: &str, content_type: &str, body: impl Into<Bytes>) -> common::Resp {
        self.with_key(Method::POST, url, content_type, body.into())
            .await
    }

    async fn with_key(
        &self,
        method: Method,
        url: &str,
        content_type: &str,
        body: Bytes,
    ) -> common::Resp {
        let request = Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", content_type)
            .body(Full::new(body))
            .expect("request");
        self.send(request).await
    }

    async fn send(&self, mut request: Request<Full<Bytes>>) -> common::Resp {
        let key = format!("Bearer {ADMIN_KEY}").parse().expect("header value");
        request.headers_mut().insert("authorization", key);
        self.0.send(request).await
    }
}

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CRM_ADMIN_KEY", ADMIN_KEY),
        ("CRM_SUITE_SECRET", SUITE_SECRET),
        ("CRM_PUSH_TOKEN", PUSH_TOKEN),
        ("CRM_AES_KEY", AES_KEY),
        ("CRM_PROVIDER_SECRET", PROVIDER_SECRET),
    ]
}

fn config_for(fake: &FakeWeChat, suite_id: &str, extra: &str) -> String {
    format!(
        r#"[proxy]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_key_env = "CRM_ADMIN_KEY"

[upstream]
ca_file = {ca:?}
token_timeout_ms = 2000
token_retry_min_ms = 200
token_retry_max_ms = 1000

{extra}

[platforms.crm]
kind = "wecom"
suite_id = "{suite_id}"
secret_env = "CRM_SUITE_SECRET"
push_token_env = "CRM_PUSH_TOKEN"
encoding_aes_key_env = "CRM_AES_KEY"
provider_corpid = "{PROVIDER}"
provider_secret_env = "CRM_PROVIDER_SECRET"
base_url = "{base}"
min_refresh_interval_ms = 0
"#,
        ca = fake.ca_file.display().to_string(),
        base = fake.base_url,
    )
}

fn config(fake: &FakeWeChat) -> String {
    config_for(fake, SUITE, "")
}

async fn fake() -> FakeWeChat {
    let fake = FakeWeChat::start().await;
    fake.add_suite(SUITE, SUITE_SECRET);
    fake.add_provider(PROVIDER, PROVIDER_SECRET);
    fake
}

/// WeCom's push of `xml`, encrypted for `receive_id` and signed with
/// `token` at `timestamp`: the body and the query.
fn push(xml: &str, receive_id: &str, token: &str, timestamp: u64) -> (String, String) {
    let encrypted = encrypt(xml, receive_id, AES_KEY);
    let nonce = format!("{}", fastrand::u64(..));
    let body = format!(
        "<xml><ToUserName><![CDATA[{receive_id}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt><AgentID><![CDATA[]]></AgentID></xml>"
    );
    (body, signed_query(&encrypted, token, timestamp, &nonce))
}

fn ticket_xml(ticket: &str) -> String {
    format!(
        "<xml><SuiteId><![CDATA[{SUITE}]]></SuiteId><InfoType><![CDATA[suite_ticket]]></InfoType><TimeStamp>{}</TimeStamp><SuiteTicket><![CDATA[{ticket}]]></SuiteTicket></xml>",
        unix_now()
    )
}

fn auth_xml(info_type: &str, auth_code: &str) -> String {
    format!(
        "<xml><SuiteId><![CDATA[{SUITE}]]></SuiteId><AuthCode><![CDATA[{auth_code}]]></AuthCode><InfoType><![CDATA[{info_type}]]></InfoType><TimeStamp>{}</TimeStamp></xml>",
        unix_now()
    )
}

fn cancel_xml(corpid: &str) -> String {
    format!(
        "<xml><SuiteId><![CDATA[{SUITE}]]></SuiteId><InfoType><![CDATA[cancel_auth]]></InfoType><TimeStamp>{}</TimeStamp><AuthCorpId><![CDATA[{corpid}]]></AuthCorpId></xml>",
        unix_now()
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

/// `PUT /platforms/crm/authorizers/CORPID` on `proxy`: an operator
/// registering a corp with its permanent code.
async fn put_corp(http: &Http, proxy: &Proxy, corpid: &str, code: &str) -> common::Resp {
    let url = format!("{}/platforms/crm/authorizers/{corpid}", proxy.admin_url);
    let body = format!(r#"{{"permanent_code":"{code}"}}"#);
    send(http, Method::PUT, &url, &body).await
}

/// Sends a genuine push of `xml` to the proxy's ticket endpoint.
async fn deliver(http: &Http, proxy: &Proxy, xml: &str) -> common::Resp {
    let (body, query) = push(xml, SUITE, PUSH_TOKEN, unix_now());
    let url = format!("{}/platforms/crm/ticket?{query}", proxy.admin_url);
    http.post(&url, "text/xml", body).await
}

/// A started suite with a ticket pushed and both corps installed by PUT.
async fn ready_suite(fake: &FakeWeChat, proxy: &Proxy, http: &Http) {
    fake.push_suite_ticket(SUITE, "ticket-1");
    fake.install_corp(CORP_A, "unused-code-a", CODE_A);
    fake.install_corp(CORP_B, "unused-code-b", CODE_B);
    let pushed = deliver(http, proxy, &ticket_xml("ticket-1")).await;
    assert_eq!(pushed.text(), "success");
    wait_ready(proxy, &http.0).await;
    for (corpid, code) in [(CORP_A, CODE_A), (CORP_B, CODE_B)] {
        let put = put_corp(http, proxy, corpid, code).await;
        assert_eq!(put.status, 200, "{}", put.text());
    }
}

#[tokio::test]
async fn a_cold_suite_waits_for_the_pushed_ticket_then_serves_suite_calls_with_its_token() {
    let fake = fake().await;
    let proxy = Proxy::start(&config(&fake), &env());
    let http = Http::new();

    let ready = http.get(&format!("{}/readyz", proxy.admin_url)).await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.text().contains("waiting for suite_ticket"),
        "{}",
        ready.text()
    );
    let platforms = http
        .get(&format!("{}/platforms", proxy.admin_url))
        .await
        .json();
    assert_eq!(platforms[0]["kind"], "wecom");
    assert_eq!(platforms[0]["ticket"], "waiting for suite_ticket");

    fake.push_suite_ticket(SUITE, "ticket@one");
    let pushed = deliver(&http, &proxy, &ticket_xml("ticket@one")).await;
    assert_eq!(pushed.status, 200, "{}", pushed.text());
    assert_eq!(pushed.text(), "success");
    wait_ready(&proxy, &http.0).await;
    assert_eq!(fake.suite_fetches(), 1);

    // Platform-level paths carry the suite token, whatever the client sent.
    for path in [
        "/cgi-bin/service/get_admin_list",
        "/cgi-bin/agent/set_scope",
    ] {
        let url = format!("{}/crm{path}?suite_access_token=mine", proxy.url);
        let call = http.post(&url, "application/json", "{}").await;
        call.assert_ok();
        let seen = fake.requests().pop().expect("the call reached WeCom");
        assert_eq!(seen.path, path);
        assert!(seen.token_ok, "{:?}", seen.query);
        assert!(!seen.query.unwrap_or_default().contains("=mine"));
    }

    let platforms = http.get(&format!("{}/platforms", proxy.admin_url)).await;
    assert_eq!(platforms.json()[0]["ticket"], "held");
    assert_eq!(platforms.json()[0]["corps"]["registered"], 0);
    assert!(
        !platforms.text().contains("ticket@one"),
        "{}",
        platforms.text()
    );
}

#[tokio::test]
async fn forged_stale_replayed_and_foreign_pushes_are_refused() {
    let fake = fake().await;
    let proxy = Proxy::start(&config(&fake), &env());
    let http = Http::new();
    let url = |query: &str| format!("{}/platforms/crm/ticket?{query}", proxy.admin_url);

    let (body, query) = push(&ticket_xml("t-forged"), SUITE, "not-the-token", unix_now());
    let forged = http.post(&url(&query), "text/xml", body).await;
    assert_eq!(forged.status, 400, "{}", forged.text());
    assert!(
        forged.text().contains("msg_signature does not match"),
        "{}",
        forged.text()
    );

    let (body, query) = push(&ticket_xml("t-stale"), SUITE, PUSH_TOKEN, unix_now() - 3600);
    let stale = http.post(&url(&query), "text/xml", body).await;
    assert_eq!(stale.status, 400, "{}", stale.text());
    assert!(stale.text().contains("timestamp"), "{}", stale.text());

    let (body, query) = push(
        &ticket_xml("t-other"),
        "ww0ther5u1te00000",
        PUSH_TOKEN,
        unix_now(),
    );
    let foreign = http.post(&url(&query), "text/xml", body).await;
    assert_eq!(foreign.status, 400, "{}", foreign.text());

    // With push keys configured, an unsigned JSON ticket is no way in.
    let json = send(
        &http,
        Method::POST,
        &url(""),
        r#"{"suite_ticket":"t-json"}"#,
    )
    .await;
    assert_eq!(json.status, 400, "{}", json.text());

    fake.push_suite_ticket(SUITE, "t-good");
    let (body, query) = push(&ticket_xml("t-good"), SUITE, PUSH_TOKEN, unix_now());
    let good = http.post(&url(&query), "text/xml", body.clone()).await;
    assert_eq!(good.text(), "success");
    let replayed = http.post(&url(&query), "text/xml", body).await;
    assert_eq!(replayed.status, 400, "{}", replayed.text());
    assert!(replayed.text().contains("replay"), "{}", replayed.text());

    wait_ready(&proxy, &http.0).await;
    assert_eq!(fake.suite_fetches(), 1, "only the genuine ticket was used");
    for line in proxy.logs() {
        assert!(!line.contains("t-good"), "the ticket was logged: {line}");
    }
}

#[tokio::test]
async fn the_consoles_url_check_is_answered_with_the_decrypted_echostr() {
    let fake = fake().await;
    let proxy = Proxy::start(&config(&fake), &env());
    let http = Http::new();
    let echostr = encrypt("4470519426364838512", SUITE, AES_KEY);
    let query = signed_query(&echostr, PUSH_TOKEN, unix_now(), "1372623149");
    let encoded: String = url_encode(&echostr);
    let url = format!(
        "{}/platforms/crm/ticket?{query}&echostr={encoded}",
        proxy.admin_url
    );
    let checked = http.get(&url).await;
    assert_eq!(checked.status, 200, "{}", checked.text());
    assert_eq!(checked.text(), "4470519426364838512");

    let forged = signed_query(&echostr, "wrong", unix_now(), "1372623150");
    let url = format!(
        "{}/platforms/crm/ticket?{forged}&echostr={encoded}",
        proxy.admin_url
    );
    assert_eq!(http.get(&url).await.status, 400);
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn an_install_push_is_answered_at_once_then_exchanged_and_the_corp_served_and_uninstalled() {
    let fake = fake().await;
    let proxy = Proxy::start(&config(&fake), &env());
    let http = Http::new();
    fake.push_suite_ticket(SUITE, "ticket-1");
    assert_eq!(
        deliver(&http, &proxy, &ticket_xml("ticket-1")).await.text(),
        "success"
    );
    wait_ready(&proxy, &http.0).await;

    fake.install_corp(CORP_A, "AUTH-CODE-A", CODE_A);
    let pushed = deliver(&http, &proxy, &auth_xml("create_auth", "AUTH-CODE-A")).await;
    assert_eq!(pushed.text(), "success");
    let list = format!("{}/platforms/crm/authorizers", proxy.admin_url);
    wait_until_async("the corp to be registered", Duration::from_secs(5), || {
        let (http, list) = (http.clone(), list.clone());
        async move { http.get(&list).await.text().contains(CORP_A) }
    })
    .await;
    assert_eq!(fake.permanent_code_exchanges(), 1);

    // The corp's own calls carry its token, fetched on first use.
    let url = format!(
        "{}/crm/{CORP_A}/cgi-bin/user/get?userid=zhangsan&access_token=x",
        proxy.url
    );
    http.get(&url).await.assert_ok();
    let seen = fake.requests().pop().expect("reached WeCom");
    assert!(seen.token_ok, "{:?}", seen.query);
    assert_eq!(fake.corp_fetches(CORP_A), 1);
    // Corp ids are case-sensitive.
    let other_case = http
        .get(&format!(
            "{}/crm/{CORP_A_LOWER}/cgi-bin/user/get",
            proxy.url
        ))
        .await;
    assert_eq!(other_case.status, 404, "{}", other_case.text());

    let listed = http.get(&list).await;
    assert!(!listed.text().contains(CODE_A), "{}", listed.text());

    let pushed = deliver(&http, &proxy, &cancel_xml(CORP_A)).await;
    assert_eq!(pushed.text(), "success");
    wait_until_async("the corp to be removed", Duration::from_secs(5), || {
        let (http, list) = (http.clone(), list.clone());
        async move { !http.get(&list).await.text().contains(CORP_A) }
    })
    .await;
    let gone = http.get(&url).await;
    assert_eq!(gone.status, 404, "{}", gone.text());

    // change_auth is acknowledged too.
    let xml = format!(
        "<xml><SuiteId>{SUITE}</SuiteId><InfoType>change_auth</InfoType><TimeStamp>{}</TimeStamp><AuthCorpId>{CORP_B}</AuthCorpId></xml>",
        unix_now()
    );
    assert_eq!(deliver(&http, &proxy, &xml).await.text(), "success");
    for line in proxy.logs() {
        assert!(
            !line.contains(CODE_A),
            "a permanent code was logged: {line}"
        );
    }
}

#[tokio::test]
async fn corps_are_registered_by_the_admin_and_their_tokens_renewed_on_a_token_error() {
    let fake = fake().await;
    let proxy = Proxy::start(&config(&fake), &env());
    let http = Http::new();
    ready_suite(&fake, &proxy, &http).await;

    let bad = send(
        &http,
        Method::PUT,
        &format!("{}/platforms/crm/authorizers/{CORP_A}", proxy.admin_url),
        "{}",
    )
    .await;
    assert_eq!(bad.status, 400);

    let url = format!("{}/crm/{CORP_B}/cgi-bin/department/list", proxy.url);
    http.get(&url).await.assert_ok();
    assert_eq!(fake.corp_fetches(CORP_B), 1);
    assert_eq!(
        fake.corp_fetches(CORP_A),
        0,
        "an unused corp costs no fetch"
    );

    // WeCom ends the corp's token early: 40014, one refetch, one retry.
    fake.revoke(CORP_B);
    let retried = http.get(&url).await;
    retried.assert_ok();
    assert_eq!(fake.corp_fetches(CORP_B), 2);
    assert!(fake.requests().pop().expect("retried").token_ok);

    // And the suite token: 40082 on get_corp_token refreshes it.
    fake.revoke(SUITE);
    let url_a = format!("{}/crm/{CORP_A}/cgi-bin/department/list", proxy.url);
    http.get(&url_a).await.assert_ok();
    assert_eq!(fake.suite_fetches(), 2);

    let corps = http
        .get(&format!("{}/platforms/crm/authorizers", proxy.admin_url))
        .await;
    assert!(!corps.text().contains(CODE_A) && !corps.text().contains(CODE_B));
    let platforms = http
        .get(&format!("{}/platforms", proxy.admin_url))
        .await
        .json();
    assert_eq!(platforms[0]["corps"]["registered"], 2);
    assert_eq!(platforms[0]["corps"]["in_use"], 2);

    let deleted = send(
        &http,
        Method::DELETE,
        &format!("{}/platforms/crm/authorizers/{CORP_A}", proxy.admin_url),
        "",
    )
    .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(http.get(&url_a).await.status, 404);
}

/// A corp is a service provider's customer: access lines name the suite,
/// never the corp, whether it is registered or not.
#[tokio::test]
async fn access_lines_name_the_suite_never_the_corp() {
    let fake = fake().await;
    let proxy = Proxy::start(&config(&fake), &env());
    let http = Http::new();
    ready_suite(&fake, &proxy, &http).await;
    let unknown = "wwNotInstalled000003";

    http.get(&format!(
        "{}/crm/{CORP_A}/cgi-bin/department/list",
        proxy.url
    ))
    .await
    .assert_ok();
    let refused = http
        .get(&format!(
            "{}/crm/{unknown}/cgi-bin/department/list",
            proxy.url
        ))
        .await;
    assert_eq!(refused.status, 404);
    let line = proxy
        .wait_for_log("path=\"/crm/{corp}/cgi-bin/department/list\" status=404")
        .await;
    assert!(line.contains("app=\"crm\""), "{line}");
    let access: Vec<String> = proxy
        .logs()
        .into_iter()
        .filter(|l| l.contains("wechat_token_proxy::access") && l.contains("/crm/"))
        .collect();
    assert_eq!(access.len(), 2, "{access:#?}");
    for line in &access {
        assert!(
            !line.contains(CORP_A) && !line.contains(unknown),
            "an access line names a corp: {line}"
        );
    }
}

#[tokio::test]
async fn a_suite_call_refused_with_40082_gets_a_new_suite_token_and_one_retry() {
    let fake = fake().await;
    let proxy = Proxy::start(&config(&fake), &env());
    let http = Http::new();
    ready_suite(&fake, &proxy, &http).await;
    assert_eq!(fake.suite_fetches(), 1);
    fake.revoke(SUITE);
    let url = format!("{}/crm/cgi-bin/service/get_admin_list", proxy.url);
    let body = format!(r#"{{"auth_corpid":"{CORP_A}","agentid":1000012}}"#);
    let call = http.post(&url, "application/json", body).await;
    call.assert_ok();
    assert_eq!(fake.suite_fetches(), 2);
    let seen = fake.requests();
    let last_two: Vec<bool> = seen.iter().rev().take(2).map(|r| r.token_ok).collect();
    assert_eq!(last_two, vec![true, false], "refused once, then retried");
}

#[tokio::test]
async fn sdk_token_calls_are_answered_with_placeholders_that_the_proxy_replaces() {
    let fake = fake().await;
    let proxy = Proxy::start(&config(&fake), &env());
    let http = Http::new();
    ready_suite(&fake, &proxy, &http).await;
    let fetches = fake.suite_fetches();

    let suite = http
        .post(
            &format!("{}/crm/cgi-bin/service/get_suite_token", proxy.url),
            "application/json",
            r#"{"suite_id":"x","suite_secret":"dummy","suite_ticket":"x"}"#,
        )
        .await
        .json();
    let suite_placeholder = suite["suite_access_token"]
        .as_str()
        .expect("placeholder")
        .to_owned();
    let provider = http
        .post(
            &format!("{}/crm/cgi-bin/service/get_provider_token", proxy.url),
            "application/json",
            r#"{"corpid":"x","provider_secret":"dummy"}"#,
        )
        .await
        .json();
    let provider_placeholder = provider["provider_access_token"]
        .as_str()
        .expect("placeholder")
        .to_owned();
    let corp = http
        .post(
            &format!(
                "{}/crm/cgi-bin/service/get_corp_token?suite_access_token={suite_placeholder}",
                proxy.url
            ),
            "application/json",
            "{}",
        )
        .await
        .json();
    assert!(corp["access_token"].is_string(), "{corp}");
    assert_ne!(
        suite_placeholder, provider_placeholder,
        "each credential its own placeholder"
    );
    assert_eq!(fake.suite_fetches(), fetches, "answered here");
    assert_eq!(fake.corp_fetches(CORP_A), 0, "answered here");

    // The provider token, where the client put its placeholder.
    let url = format!(
        "{}/crm/cgi-bin/license/list_order?provider_access_token={provider_placeholder}",
        proxy.url
    );
    http.post(&url, "application/json", "{}").await.assert_ok();
    let seen = fake.requests().pop().expect("reached WeCom");
    assert!(seen.token_ok, "{:?}", seen.query);
    let url = format!(
        "{}/crm/cgi-bin/service/get_login_info?access_token={provider_placeholder}",
        proxy.url
    );
    http.post(&url, "application/json", r#"{"auth_code":"x"}"#)
        .await
        .assert_ok();
    let seen = fake.requests().pop().expect("reached WeCom");
    assert!(seen.token_ok, "{:?}", seen.query);
    assert_eq!(fake.provider_fetches(), 1);

    // A permanent-code placeholder in a body: the corp's real code goes up,
    // and never comes back.
    let url = format!(
        "{}/crm/cgi-bin/service/get_auth_info?suite_access_token={suite_placeholder}",
        proxy.url
    );
    let body = format!(
        r#"{{"auth_corpid":"{CORP_A}","permanent_code":"WECHAT_TOKEN_PROXY_PERMANENT_CODE_PLACEHOLDER"}}"#
    );
    let info = http.post(&url, "application/json", body).await;
    info.assert_ok();
    assert!(!info.text().contains(CODE_A));
    let seen = fake.requests().pop().expect("reached WeCom");
    assert!(String::from_utf8_lossy(&seen.body).contains(CODE_A));

    // get_permanent_code through the app listener: exchanged here, the corp
    // registered, the code and token replaced by placeholders.
    fake.install_corp("wwNewCorp00000003", "AUTH-NEW", "PERMANENT-NEW-secret");
    let url = format!(
        "{}/crm/cgi-bin/service/get_permanent_code?suite_access_token={suite_placeholder}",
        proxy.url
    );
    let exchanged = http
        .post(&url, "application/json", r#"{"auth_code":"AUTH-NEW"}"#)
        .await;
    assert_eq!(exchanged.status, 200, "{}", exchanged.text());
    assert_eq!(
        exchanged.json()["access_token"],
        "WECHAT_TOKEN_PROXY_PLACEHOLDER"
    );
    assert!(
        !exchanged.text().contains("PERMANENT-NEW-secret"),
        "{}",
        exchanged.text()
    );
    assert_eq!(
        exchanged.json()["auth_corp_info"]["corpid"],
        "wwNewCorp00000003"
    );
    let corp_call = format!("{}/crm/wwNewCorp00000003/cgi-bin/user/list", proxy.url);
    http.get(&corp_call).await.assert_ok();
    assert_eq!(fake.corp_fetches("wwNewCorp00000003"), 1);
}

#[tokio::test]
async fn a_corps_js_sdk_tickets_are_held_here_and_its_pages_signed_here() {
    let fake = fake().await;
    let proxy = Proxy::start(&config(&fake), &env());
    let http = Http::new();
    ready_suite(&fake, &proxy, &http).await;
    for _ in 0..3 {
        let ticket = http
            .get(&format!(
                "{}/crm/{CORP_A}/cgi-bin/get_jsapi_ticket",
                proxy.url
            ))
            .await;
        ticket.assert_ok();
        assert!(fake.ticket_is_live(ticket.json()["ticket"].as_str().expect("ticket")));
        let agent = http
            .get(&format!(
                "{}/crm/{CORP_A}/cgi-bin/ticket/get?type=agent_config",
                proxy.url
            ))
            .await;
        agent.assert_ok();
    }
    assert_eq!(fake.ticket_fetches("corp"), 1);
    assert_eq!(fake.ticket_fetches("agent"), 1);
    // Fetched with the corp token of the suite's app in the corp.
    for ticket in fake
        .issued_tickets("corp")
        .iter()
        .chain(&fake.issued_tickets("agent"))
    {
        assert!(ticket.contains(&format!("{CORP_A}@{SUITE}")), "{ticket}");
    }
    let config = http
        .get(&format!(
            "{}/crm/{CORP_A}/jssdk/config?url=https%3A%2F%2Fexample.com%2Fp",
            proxy.url
        ))
        .await;
    assert_eq!(config.status, 200, "{}", config.text());
    let signed = config.json();
    assert_eq!(signed["appId"], CORP_A);
    let ticket = fake.issued_tickets("corp").pop().expect("a corp ticket");
    let expected = common::sha1_by_python(&format!(
        "jsapi_ticket={ticket}&noncestr={}&timestamp={}&url=https://example.com/p",
        signed["nonceStr"].as_str().expect("nonceStr"),
        signed["timestamp"]
    ));
    assert_eq!(signed["signature"], expected.as_str());
    let agent = http
        .get(&format!(
            "{}/crm/{CORP_A}/jssdk/agent-config?agentid=1000012&url=https%3A%2F%2Fexample.com%2Fp",
            proxy.url
        ))
        .await;
    assert_eq!(agent.status, 200, "{}", agent.text());
    let agent = agent.json();
    assert_eq!(agent["corpid"], CORP_A);
    assert_eq!(agent["agentid"], 1000012);
    let ticket = fake.issued_tickets("agent").pop().expect("an agent ticket");
    common::assert_signed_json(&agent, &ticket, "https://example.com/p");
    assert_eq!(fake.ticket_fetches("corp"), 1);

    // A corp that only makes API calls holds no tickets; the status shows
    // who asked, the suite's summary counts, the metrics name no corp.
    http.get(&format!("{}/crm/{CORP_B}/cgi-bin/user/list", proxy.url))
        .await
        .assert_ok();
    let corps = http
        .get(&format!("{}/platforms/crm/authorizers", proxy.admin_url))
        .await
        .json();
    let entry = |corpid: &str| {
        corps
            .as_array()
            .expect("a list")
            .iter()
            .find(|c| c["corpid"] == corpid)
            .cloned()
            .expect("listed")
    };
    assert_eq!(
        entry(CORP_A)["tickets"]["corp"]["state"],
        "valid",
        "{corps}"
    );
    assert_eq!(
        entry(CORP_A)["tickets"]["agent"]["state"],
        "valid",
        "{corps}"
    );
    assert!(entry(CORP_B)["tickets"].is_null(), "{corps}");
    let platforms = http.get(&format!("{}/platforms", proxy.admin_url)).await;
    assert_eq!(
        platforms.json()[0]["tickets"],
        serde_json::json!({"accounts": 1, "valid": 2, "missing": 0}),
        "{}",
        platforms.text()
    );
    let metrics = http
        .get(&format!("{}/metrics", proxy.admin_url))
        .await
        .text();
    assert!(!metrics.contains(CORP_A) && !metrics.contains(CORP_B));
    assert!(!proxy.logs().iter().any(|l| l.contains("TICKET-")));

    // The corp uninstalls the suite: its tickets go with it.
    assert_eq!(
        deliver(&http, &proxy, &cancel_xml(CORP_A)).await.text(),
        "success"
    );
    let platforms = http.get(&format!("{}/platforms", proxy.admin_url)).await;
    assert_eq!(
        platforms.json()[0]["tickets"]["accounts"],
        0,
        "{}",
        platforms.text()
    );
}

#[tokio::test]
async fn a_corps_tickets_are_its_suite_apps_never_those_of_a_wecom_app_of_the_same_corp() {
    // A corp with a self-built app (its corpid as apps.work validates it)
    // that also installed the suite.
    const CORP: &str = "ww0000000000000a11";
    let redis = RedisServer::start();
    let fake = fake().await;
    fake.add_app(AppKind::WeCom, CORP, "work-secret");
    let work = format!(
        "{}\n[apps.work]\nkind = \"wecom\"\ncorpid = \"{CORP}\"\nsecret_env = \"WORK_SECRET\"\nagentid = 1000002\nbase_url = \"{}\"\n",
        redis.store_table(),
        fake.base_url
    );
    let mut env = env();
    env.push(("WORK_SECRET", "work-secret"));
    let proxy = Proxy::start(&config_for(&fake, SUITE, &work), &env);
    let http = Http::new();
    ready_suite(&fake, &proxy, &http).await;
    fake.install_corp(CORP, "unused-code", "PERMANENT-CODE-SHARED");
    let url = format!("{}/platforms/crm/authorizers/{CORP}", proxy.admin_url);
    let put = send(
        &http,
        Method::PUT,
        &url,
        r#"{"permanent_code":"PERMANENT-CODE-SHARED"}"#,
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.text());
    // The corp's own app asks first; its tickets are in Redis.
    let agent = "cgi-bin/ticket/get?type=agent_config";
    let own = http.get(&format!("{}/work/{agent}", proxy.url)).await;
    own.assert_ok();
    let suites = http.get(&format!("{}/crm/{CORP}/{agent}", proxy.url)).await;
    suites.assert_ok();
    let (own, suites) = (
        own.json()["ticket"].clone(),
        suites.json()["ticket"].clone(),
    );
    assert_ne!(
        own, suites,
        "the suite's app took the corp's own app's ticket"
    );
    assert!(
        suites
            .as_str()
            .expect("a ticket")
            .contains(&format!("@{SUITE}")),
        "{suites}"
    );
    assert_eq!(fake.ticket_fetches("agent"), 2);
}

#[tokio::test]
async fn a_customized_app_gets_its_corp_token_from_gettoken_with_the_permanent_code() {
    let fake = FakeWeChat::start().await;
    fake.add_suite(DK_SUITE, SUITE_SECRET);
    fake.add_provider(PROVIDER, PROVIDER_SECRET);
    fake.add_app(AppKind::WeCom, CORP_A, CODE_A);
    let proxy = Proxy::start(&config_for(&fake, DK_SUITE, ""), &env());
    let http = Http::new();
    let put = put_corp(&http, &proxy, CORP_A, CODE_A).await;
    assert_eq!(put.status, 200, "{}", put.text());
    // No suite_ticket needed: a customized app's corp token comes from gettoken.
    let call = http
        .get(&format!(
            "{}/crm/{CORP_A}/cgi-bin/user/get?userid=x",
            proxy.url
        ))
        .await;
    call.assert_ok();
    assert!(fake.requests().pop().expect("reached WeCom").token_ok);
    assert_eq!(fake.token_fetches_for(CORP_A), 1);
    assert_eq!(fake.corp_fetches(CORP_A), 0);
    assert_eq!(fake.suite_fetches(), 0);
}

#[tokio::test]
async fn replicas_sharing_redis_share_the_ticket_the_registry_and_one_corp_token_and_ticket_fetch()
{
    let redis = RedisServer::start();
    let fake = fake().await;
    let text = config_for(&fake, SUITE, &redis.store_table());
    let first = Proxy::start(&text, &env());
    let replicas = [
        first,
        Proxy::start(&text, &env()),
        Proxy::start(&text, &env()),
    ];
    let http = Http::new();
    ready_suite(&fake, &replicas[0], &http).await;
    // The push reached one replica; the others find ticket and corps in Redis.
    for proxy in &replicas[1..] {
        wait_ready(proxy, &http.0).await;
    }
    for proxy in replicas.iter().chain(&replicas) {
        let url = format!("{}/crm/{CORP_A}/cgi-bin/user/list", proxy.url);
        http.get(&url).await.assert_ok();
    }
    assert_eq!(fake.corp_fetches(CORP_A), 1, "one fetch for the fleet");
    assert_eq!(fake.suite_fetches(), 1, "one suite token for the fleet");
    // The corp's JS-SDK tickets too, asked of all three at once.
    let path = format!("/crm/{CORP_A}/cgi-bin/get_jsapi_ticket");
    let answers = common::spread(&http.0, &replicas, 30, &path).await;
    let tickets: Vec<_> = answers
        .iter()
        .map(|a| {
            a.assert_ok();
            a.json()["ticket"].clone()
        })
        .collect();
    assert!(tickets.iter().all(|t| *t == tickets[0]), "{tickets:?}");
    assert_eq!(
        fake.ticket_fetches("corp"),
        1,
        "one ticket fetch for the fleet"
    );
}

/// The n-th corp of the scale test and its permanent code.
fn nth_corp(n: usize) -> (String, String) {
    (
        format!("wwScale{n:010}"),
        format!("PERMANENT-CODE-{n}-secret"),
    )
}

/// The scale figures: 1,000 corps registered through the admin API, three
/// replicas sharing Redis, 100 of the corps used with concurrent calls
/// across them, then one replica killed and started again. Prints time to
/// ready and RSS (measured, not asserted: CPU is shared) and asserts one
/// corp token fetch per corp used, none for the rest, and none for the
/// restarted replica.
#[tokio::test]
async fn a_thousand_corps_in_redis_three_replicas_one_corp_token_fetch_per_corp_used() {
    const REGISTERED: usize = 1_000;
    const USED: usize = 100;
    const FETCHES: &str = "wechat_proxy_authorizer_token_refreshes_total";
    let redis = RedisServer::start();
    let fake = fake().await;
    let text = config_for(&fake, SUITE, &redis.store_table());
    let http = Http::new();
    let corps: Vec<(String, String)> = (0..REGISTERED).map(nth_corp).collect();
    for (corpid, code) in &corps {
        fake.install_corp(corpid, &format!("unused-{corpid}"), code);
    }

    // WeCom's push reaches the first replica, and an operator registers
    // the corps through it.
    let first = Proxy::start(&text, &env());
    fake.push_suite_ticket(SUITE, "ticket-scale");
    let pushed = deliver(&http, &first, &ticket_xml("ticket-scale")).await;
    assert_eq!(pushed.text(), "success");
    wait_ready(&first, &http.0).await;
    let registering = Instant::now();
    for (corpid, code) in &corps {
        let put = put_corp(&http, &first, corpid, code).await;
        assert_eq!(put.status, 200, "{}", put.text());
    }
    let registering = registering.elapsed();
    // The others start on what Redis holds: ticket, suite token, registry.
    let mut ready = Vec::new();
    let mut replicas = vec![first];
    for _ in 0..2 {
        let (proxy, took) = start_ready(&text, &env(), &http.0).await;
        let line = proxy.wait_for_log("corp registry loaded").await;
        assert!(line.contains(&format!("corps={REGISTERED}")), "{line}");
        ready.push(took);
        replicas.push(proxy);
    }
    let idle_rss: Vec<u64> = replicas.iter().map(Proxy::rss_kib).collect();

    // Each corp used is called twice on every replica, its six calls sent
    // together; slow fetches make the other replicas' calls arrive while
    // one is under way, so they wait for it through the fleet lease.
    fake.set_token_delay(Duration::from_millis(200));
    let call = |corpid: &str| format!("/crm/{corpid}/cgi-bin/user/get?userid=zhangsan");
    let paths: Vec<String> = (0..USED * 6).map(|i| call(&corps[i / 6].0)).collect();
    let started = Instant::now();
    assert_all_ok(&spread_paths(&http.0, &replicas, &paths, 64).await);
    let (calls, took) = (paths.len(), started.elapsed());
    let used_rss: Vec<u64> = replicas.iter().map(Proxy::rss_kib).collect();

    let fetched = || -> Vec<usize> { corps.iter().map(|(c, _)| fake.corp_fetches(c)).collect() };
    let first_round = fetched();
    assert!(
        first_round[..USED].iter().all(|n| *n == 1),
        "one fetch per corp used: {:?}",
        &first_round[..USED]
    );
    assert!(
        first_round[USED..].iter().all(|n| *n == 0),
        "idle corps cost no fetch"
    );
    assert_eq!(fake.suite_fetches(), 1, "one suite token for the fleet");
    // The replicas count the same, by platform, never naming a corp.
    let mut counted = 0.0;
    for proxy in &replicas {
        let text = http
            .get(&format!("{}/metrics", proxy.admin_url))
            .await
            .text();
        counted += metric_sum(&text, FETCHES, &[("platform", "crm")]);
        assert!(
            !corps[..USED].iter().any(|(c, _)| text.contains(c.as_str())),
            "a corp in /metrics"
        );
    }
    assert_eq!(counted, USED as f64);

    // kill -9 one replica and start it again: ready on the ticket, suite
    // token and registry in Redis, and serving the corps used with the
    // tokens the fleet fetched.
    let mut killed = replicas.pop().expect("three replicas");
    killed.signal("KILL");
    killed.wait_exit(Duration::from_secs(5)).expect("killed");
    drop(killed);
    let (restarted, restart_ready) = start_ready(&text, &env(), &http.0).await;
    let line = restarted.wait_for_log("corp registry loaded").await;
    assert!(line.contains(&format!("corps={REGISTERED}")), "{line}");
    assert!(restarted.has_log("suite_ticket taken from the store"));
    let restarted_idle = restarted.rss_kib();
    let paths: Vec<String> = corps[..USED].iter().map(|(c, _)| call(c)).collect();
    let replica = std::slice::from_ref(&restarted);
    assert_all_ok(&spread_paths(&http.0, replica, &paths, 64).await);
    let restarted_used = restarted.rss_kib();
    assert_eq!(fetched(), first_round, "the restarted replica fetched");
    assert_eq!(fake.suite_fetches(), 1);
    let text = http
        .get(&format!("{}/metrics", restarted.admin_url))
        .await
        .text();
    assert_eq!(metric_sum(&text, FETCHES, &[("platform", "crm")]), 0.0);
    replicas.push(restarted);
    let peak: Vec<u64> = replicas.iter().map(Proxy::rss_peak_kib).collect();

    println!(
        "wecom scale: {REGISTERED} corps in Redis, {USED} used across 3 replicas\n\
         - {REGISTERED} corps registered by PUT through replica 1 in {registering:?}\n\
         - replicas 2 and 3 (ticket, suite token, registry in Redis): ready {ready:?} after spawn\n\
         - RSS idle {idle_rss:?} KiB, after {calls} calls {used_rss:?} KiB\n\
         - {calls} calls in {took:?}\n\
         - corp token fetches: {} ({} corps fetched more than once, {} idle ones fetched)\n\
         - replica 3 killed (SIGKILL) and started again: ready {restart_ready:?} after spawn ({line}),\n  \
           RSS {restarted_idle} KiB idle, {restarted_used} KiB after calling the {USED} corps; \
           peak RSS of the three {peak:?} KiB",
        first_round.iter().sum::<usize>(),
        first_round[..USED].iter().filter(|n| **n > 1).count(),
        first_round[USED..].iter().filter(|n| **n > 0).count(),
    );
}

#[test]
fn a_bad_suite_config_names_the_file_and_the_key() {
    let base = "[platforms.crm]\nkind = \"wecom\"\nsecret_env = \"CRM_SUITE_SECRET\"\n";
    for (config, key, says) in [
        (base.to_owned(), "platforms.crm.suite_id", "missing"),
        (
            format!("{base}suite_id = \"ww-not-an-id\"\n"),
            "platforms.crm.suite_id",
            "not a suite_id",
        ),
        (
            format!("{base}suite_id = \"{SUITE}\"\ncomponent_appid = \"wx00000000000000c0\"\n"),
            "platforms.crm.component_appid",
            "suite_id",
        ),
        (
            format!("{base}suite_id = \"{SUITE}\"\nprovider_corpid = \"{PROVIDER}\"\n"),
            "platforms.crm.provider_secret_env",
            "missing",
        ),
        (
            format!("{base}suite_id = \"{SUITE}\"\nprovider_corpid = \"{PROVIDER}\"\nprovider_secret_env = \"UNSET_PROVIDER_SECRET\"\n"),
            "platforms.crm.provider_secret_env",
            "UNSET_PROVIDER_SECRET",
        ),
        (
            "[platforms.saas]\ncomponent_appid = \"wx00000000000000c0\"\nsecret_env = \"CRM_SUITE_SECRET\"\nsuite_id = \"ww5f3c1a2b3c4d5e6f\"\n".to_owned(),
            "platforms.saas.suite_id",
            "kind = \"wecom\"",
        ),
    ] {
        let path = write_temp("suite.toml", &config);
        let path = path.to_str().expect("utf-8 path");
        let (status, _, err) = run_binary(&["check", "--config", path], &env());
        assert!(!status.success(), "accepted:\n{config}");
        for part in [path, key, says] {
            assert!(err.contains(part), "{part:?} missing in: {err}");
        }
        assert!(!err.contains(SUITE_SECRET) && !err.contains(PROVIDER_SECRET), "{err}");
    }
    let good =
        format!("[proxy]\nadmin_key_env = \"CRM_ADMIN_KEY\"\n\n{base}suite_id = \"{DK_SUITE}\"\n");
    let path = write_temp("suite.toml", &good);
    let (status, _, err) = run_binary(
        &["check", "--config", path.to_str().expect("utf-8")],
        &env(),
    );
    assert!(status.success(), "{err}");
}

#[tokio::test]
async fn a_ticket_wecom_refuses_is_reported_and_metrics_name_no_corp() {
    let fake = fake().await;
    let proxy = Proxy::start(&config(&fake), &env());
    let http = Http::new();
    // The fake holds another ticket: WeCom answers 40085.
    fake.push_suite_ticket(SUITE, "the-real-ticket");
    assert_eq!(
        deliver(&http, &proxy, &ticket_xml("a-stale-ticket"))
            .await
            .text(),
        "success"
    );
    let url = format!("{}/readyz", proxy.admin_url);
    wait_until_async("40085 to be reported", Duration::from_secs(5), || {
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(&url).await.text().contains("40085") }
    })
    .await;
    let platforms = http
        .get(&format!("{}/platforms", proxy.admin_url))
        .await
        .json();
    assert_eq!(platforms[0]["suite_token"]["last_error"]["errcode"], 40085);

    // The next push carries the ticket WeCom holds: served again.
    assert_eq!(
        deliver(&http, &proxy, &ticket_xml("the-real-ticket"))
            .await
            .text(),
        "success"
    );
    wait_ready(&proxy, &http.0).await;
    fake.install_corp(CORP_A, "unused", CODE_A);
    let put = put_corp(&http, &proxy, CORP_A, CODE_A).await;
    assert_eq!(put.status, 200, "{}", put.text());
    http.get(&format!("{}/crm/{CORP_A}/cgi-bin/user/list", proxy.url))
        .await
        .assert_ok();
    let metrics = http
        .get(&format!("{}/metrics", proxy.admin_url))
        .await
        .text();
    assert!(metrics.contains("platform=\"crm\""), "{metrics}");
    assert!(
        !metrics.contains(CORP_A),
        "a corp in a metric label: {metrics}"
    );
}

#[tokio::test]
async fn a_reset_permanent_code_replaces_the_old_one() {
    let fake = fake().await;
    let proxy = Proxy::start(&config_for(&fake, SUITE, ""), &env());
    let http = Http::new();
    ready_suite(&fake, &proxy, &http).await;
    // WeCom resets CORP_A's code: the old one no longer fetches a token.
    fake.install_corp(CORP_A, "RESET-CODE", "PERMANENT-CODE-A-reset");
    assert_eq!(
        deliver(
            &http,
            &proxy,
            &auth_xml("reset_permanent_code", "RESET-CODE")
        )
        .await
        .text(),
        "success"
    );
    wait_until_async(
        "the reset code to be exchanged",
        Duration::from_secs(5),
        || {
            let fake = &fake;
            async move { fake.permanent_code_exchanges() == 1 }
        },
    )
    .await;
    let url = format!("{}/crm/{CORP_A}/cgi-bin/user/list", proxy.url);
    wait_until_async(
        "the corp to be served with the new code",
        Duration::from_secs(5),
        || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(&url).await.json()["errcode"] == 0 }
        },
    )
    .await;
    assert_eq!(
        fake.corp_fetches(CORP_A),
        1,
        "fetched with the new code only"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readmes_wechatpy_snippet_reaches_wecom_through_the_proxy() {
    let fake = fake().await;
    let proxy = Proxy::start(&config(&fake), &env());
    let http = Http::new();
    ready_suite(&fake, &proxy, &http).await;
    let before = fake.requests().len();

    let snippet = common::readme_python("wechatpy.enterprise", &proxy.addr.to_string());
    let stdout = common::run_python(&snippet).await;
    let seen: Vec<(String, bool)> = fake.requests()[before..]
        .iter()
        .map(|r| (r.path.clone(), r.token_ok))
        .collect();
    assert_eq!(
        seen,
        [
            ("/cgi-bin/user/get".to_owned(), true),
            ("/cgi-bin/service/get_login_info".to_owned(), true),
        ]
    );
    assert_eq!(fake.ticket_fetches("corp"), 1);
    assert_eq!(fake.ticket_fetches("agent"), 1);
    assert_eq!(fake.corp_fetches(CORP_A), 1);
    // The agent config, signed with the agent ticket of the suite's app.
    let ticket = fake.issued_tickets("agent").pop().expect("an agent ticket");
    assert!(ticket.contains(&format!("@{SUITE}")), "{ticket}");
    let printed = stdout
        .lines()
        .find(|l| l.contains("'signature'"))
        .expect("the signed config");
    for part in [
        format!("'corpid': '{CORP_A}'"),
        "'agentid': 1000012".to_owned(),
    ] {
        assert!(printed.contains(&part), "{part} missing: {printed}");
    }
    common::assert_signed_printed(printed, &ticket, "https://crm.example/page");
    assert!(!stdout.contains(CODE_A), "{stdout}");
}
