//! JS-SDK tickets held like tokens: SDKs' ticket calls answered from one held
//! ticket (one fetch for many callers, and for a fleet sharing Redis), lazy
//! fetching, renewal ahead of expiry that never trusts a repeated
//! `expires_in`, token errors handled by the token engine, and `wx.config`
//! signatures checked against an independent SHA-1.

mod common;

use std::time::Duration;

use common::fake_wechat::{AppKind, FakeOptions, FakeWeChat};
use common::redis::RedisServer;
use common::setup::{env, ConfigBuilder, Harness, CORP_ID, MP_APPID, SECRET};
use common::{wait_until, wait_until_async, Http, Proxy, Resp};

const GET_JSAPI: &str = "/cgi-bin/ticket/getticket?access_token=PLACEHOLDER&type=jsapi";

/// The ticket of a successful ticket answer, checked for WeChat's shape.
fn ticket_of(r: &Resp) -> String {
    let v = r.json();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(v["errcode"], 0, "{}", r.text());
    assert_eq!(v["errmsg"], "ok");
    assert!(v["expires_in"].as_u64().is_some(), "{}", r.text());
    v["ticket"].as_str().expect("a ticket").to_owned()
}

fn encode(url: &str) -> String {
    url.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_getticket_calls_cause_one_fetch_and_none_at_start() {
    let h = Harness::mp("stable").await;
    assert_eq!(
        h.fake.ticket_fetches("jsapi"),
        0,
        "no ticket fetch at start"
    );

    let answers = common::concurrently(&h.http, &h.url(GET_JSAPI), 20).await;
    let tickets: Vec<String> = answers.iter().map(ticket_of).collect();
    assert_eq!(h.fake.ticket_fetches("jsapi"), 1);
    let issued = h.fake.issued_tickets("jsapi");
    assert!(tickets.iter().all(|t| *t == issued[0]), "{tickets:?}");
    let left = answers[0].json()["expires_in"].as_u64().unwrap();
    assert!((7100..=7200).contains(&left), "true seconds left: {left}");
    // The other kind is held apart.
    let card = h
        .http
        .get(&h.url("/cgi-bin/ticket/getticket?type=wx_card"))
        .await;
    assert_ne!(ticket_of(&card), issued[0]);
    assert_eq!(h.fake.ticket_fetches("wx_card"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn three_sdk_style_clients_share_one_ticket() {
    let h = Harness::mp("classic").await;
    // Each SDK instance has its own connection, asks for a token (the
    // placeholder) and then for the ticket with it, all at once.
    let sdks: Vec<_> = (0..3)
        .map(|_| {
            let (http, base) = (Http::new(), h.proxy.url.clone());
            tokio::spawn(async move {
                let token = http
                    .get(&format!(
                        "{base}/cgi-bin/token?grant_type=client_credential&appid={MP_APPID}&secret=x"
                    ))
                    .await;
                let token = token.json()["access_token"].as_str().unwrap().to_owned();
                http.get(&format!(
                    "{base}/cgi-bin/ticket/getticket?access_token={token}&type=jsapi"
                ))
                .await
            })
        })
        .collect();
    let mut tickets = Vec::new();
    for sdk in sdks {
        tickets.push(ticket_of(&sdk.await.unwrap()));
    }
    assert_eq!(h.fake.ticket_fetches("jsapi"), 1);
    assert!(tickets.windows(2).all(|w| w[0] == w[1]));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_proxies_sharing_redis_make_one_ticket_fetch() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let redis = RedisServer::start();
    let http = Http::new();
    let config = ConfigBuilder::new(&fake).mp("stable");
    let text = format!(
        "{}[store]\nkind = \"redis\"\nurl = {:?}\n",
        config.render(),
        redis.url()
    );
    let (a, b) = (Proxy::start(&text, &env()), Proxy::start(&text, &env()));
    for p in [&a, &b] {
        let url = format!("{}/readyz", p.admin_url);
        wait_until_async("a replica to be ready", Duration::from_secs(10), || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(&url).await.status == 200 }
        })
        .await;
    }
    let (url_a, url_b) = (
        format!("{}{GET_JSAPI}", a.url),
        format!("{}{GET_JSAPI}", b.url),
    );
    let (ra, rb) = tokio::join!(
        common::concurrently(&http, &url_a, 10),
        common::concurrently(&http, &url_b, 10),
    );
    let tickets: Vec<String> = ra.iter().chain(&rb).map(ticket_of).collect();
    assert_eq!(fake.ticket_fetches("jsapi"), 1, "one fetch for the fleet");
    assert!(tickets.iter().all(|t| *t == tickets[0]));
    let key = format!("wechat-token-proxy:{MP_APPID}:ticket_jsapi:token");
    assert!(redis.get(&key).is_some(), "{:?}", redis.keys("*"));
    // The token's key is as it always was.
    assert!(redis
        .get(&format!("wechat-token-proxy:{MP_APPID}:stable:token"))
        .is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ticket_is_renewed_ahead_while_used_never_lengthened_by_a_repeated_expires_in_and_left_alone_when_unused(
) {
    let fake = Harness::fake_with(FakeOptions {
        ticket_lifetime: Duration::from_secs(3),
        ..FakeOptions::default()
    })
    .await;
    let config = ConfigBuilder::new(&fake)
        .mp("stable")
        .app_line("refresh_before_expiry_s = 1");
    let h = Harness::start(fake, config).await;

    let first = ticket_of(&h.http.get(&h.url(GET_JSAPI)).await);
    // Renewal 1 s before the end: WeChat hands back the same ticket with a
    // full `expires_in`; its life still ends 3 s after it was first seen.
    wait_until("the renewal ahead", Duration::from_secs(5), || {
        h.fake.ticket_fetches("jsapi") >= 2
    })
    .await;
    let r = h.http.get(&h.url(GET_JSAPI)).await;
    assert_eq!(ticket_of(&r), first);
    let left = r.json()["expires_in"].as_u64().unwrap();
    assert!(
        left <= 1,
        "a repeated expires_in lengthened the ticket: {left} s left"
    );

    // When it ends, the renewal brings the next ticket without a request.
    wait_until("a new ticket", Duration::from_secs(5), || {
        h.fake.issued_tickets("jsapi").len() == 2
    })
    .await;
    let renewed = h
        .proxy
        .wait_for_log("ticket=\"jsapi\" reason=\"ahead\" repeated=false")
        .await;
    assert!(renewed.contains("ticket fetched"), "{renewed}");
    let fetches = h.fake.ticket_fetches("jsapi");

    // Nobody asked for the new ticket: it is not renewed again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        h.fake.ticket_fetches("jsapi"),
        fetches,
        "an unused ticket was renewed"
    );
    for line in h.proxy.logs() {
        assert!(!line.contains("TICKET-"), "a ticket in the log: {line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ticket_fetch_meeting_a_token_error_gets_a_new_token_and_retries_once() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    // The second token error comes soon after the first: the next fetch is
    // allowed within the 2 s a request waits.
    let config = ConfigBuilder::new(&fake)
        .mp("classic")
        .app_line("min_refresh_interval_ms = 500");
    let h = Harness::start(fake, config).await;
    h.fake.revoke(MP_APPID);
    let r = h.http.get(&h.url(GET_JSAPI)).await;
    ticket_of(&r);
    assert_eq!(h.fake.token_fetches(), 2, "one new token");
    assert_eq!(h.fake.ticket_fetches("jsapi"), 2, "one retry");

    // A new token leaves the ticket as it is.
    h.fake.revoke(MP_APPID);
    h.http
        .get(&h.url("/cgi-bin/user/info?openid=o1"))
        .await
        .assert_ok();
    assert_eq!(h.fake.token_fetches(), 3);
    ticket_of(&h.http.get(&h.url(GET_JSAPI)).await);
    assert_eq!(h.fake.ticket_fetches("jsapi"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn jssdk_config_is_signed_with_the_held_ticket() {
    let h = Harness::mp("stable").await;
    let page = "https://shop.example.cn/pay?order=7&x=a%20b";
    for path in ["/jssdk/config", "/mp/jssdk/config"] {
        let url = h.url(&format!("{path}?url={}", encode(&format!("{page}#/cart"))));
        let r = h.http.get(&url).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let v = r.json();
        assert_eq!(v["appId"], MP_APPID);
        let nonce = v["nonceStr"].as_str().unwrap();
        assert!(nonce.len() >= 16, "{nonce}");
        let timestamp = v["timestamp"].as_u64().expect("a number");
        let ticket = &h.fake.issued_tickets("jsapi")[0];
        let expected = common::sha1_by_python(&format!(
            "jsapi_ticket={ticket}&noncestr={nonce}&timestamp={timestamp}&url={page}"
        ));
        assert_eq!(v["signature"], expected.as_str(), "{v}");
        assert!(
            !r.text().contains(ticket.as_str()),
            "the ticket was handed out"
        );
    }
    assert_eq!(h.fake.ticket_fetches("jsapi"), 1);
    let again = h
        .http
        .get(&h.url(&format!("/jssdk/config?url={}", encode(page))))
        .await;
    assert_ne!(
        again.json()["nonceStr"],
        h.http
            .get(&h.url(&format!("/jssdk/config?url={}", encode(page))))
            .await
            .json()["nonceStr"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jssdk_config_without_an_http_url_is_a_400() {
    let h = Harness::mp("stable").await;
    for query in [
        "",
        "?url=",
        "?url=ftp%3A%2F%2Fa.cn%2F",
        "?url=javascript%3Aalert(1)",
    ] {
        let r = h.http.get(&h.url(&format!("/jssdk/config{query}"))).await;
        assert_eq!(r.status, 400, "{query}: {}", r.text());
        assert!(
            r.json()["errmsg"].as_str().unwrap().contains("url"),
            "{}",
            r.text()
        );
    }
    assert_eq!(h.fake.ticket_fetches("jsapi"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_path_policy_sees_the_jssdk_paths() {
    let fake = Harness::fake_with(FakeOptions::default()).await;
    let config = ConfigBuilder::new(&fake)
        .mp("stable")
        .app_line(r#"deny_paths = ["/jssdk/config"]"#);
    let h = Harness::start(fake, config).await;
    let r = h
        .http
        .get(&h.url("/jssdk/config?url=https%3A%2F%2Fa.cn%2F"))
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(h.fake.ticket_fetches("jsapi"), 0);
}

async fn wecom(agentid: Option<u64>) -> Harness {
    let fake = FakeWeChat::start().await;
    fake.add_app(AppKind::WeCom, CORP_ID, SECRET);
    let mut config = ConfigBuilder::new(&fake).wecom("work");
    if let Some(id) = agentid {
        config = config.app_line(&format!("agentid = {id}"));
    }
    Harness::start(fake, config).await
}

#[tokio::test(flavor = "multi_thread")]
async fn wecom_agent_config_without_agentid_names_the_key() {
    let h = wecom(None).await;
    let r = h
        .http
        .get(&h.url("/work/jssdk/agent-config?url=https%3A%2F%2Fa.cn%2F"))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let msg = r.json()["errmsg"].as_str().unwrap().to_owned();
    assert!(msg.contains("apps.work.agentid"), "{msg}");
    assert_eq!(h.fake.ticket_fetches("agent"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn wecom_configs_are_signed_with_the_corp_and_the_agent_ticket() {
    let h = wecom(Some(1000002)).await;
    let page = "https://oa.example.cn/app";
    let r = h
        .http
        .get(&h.url(&format!("/work/jssdk/config?url={}", encode(page))))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["appId"], CORP_ID);
    let corp = &h.fake.issued_tickets("corp")[0];
    let expected = common::sha1_by_python(&format!(
        "jsapi_ticket={corp}&noncestr={}&timestamp={}&url={page}",
        v["nonceStr"].as_str().unwrap(),
        v["timestamp"]
    ));
    assert_eq!(v["signature"], expected.as_str());

    let r = h
        .http
        .get(&h.url(&format!("/work/jssdk/agent-config?url={}", encode(page))))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["corpid"], CORP_ID);
    assert_eq!(v["agentid"], 1000002);
    let agent = &h.fake.issued_tickets("agent")[0];
    assert_ne!(agent, corp);
    let expected = common::sha1_by_python(&format!(
        "jsapi_ticket={agent}&noncestr={}&timestamp={}&url={page}",
        v["nonceStr"].as_str().unwrap(),
        v["timestamp"]
    ));
    assert_eq!(v["signature"], expected.as_str());

    // WeCom SDKs' own ticket calls are answered from the same tickets.
    let corp_call = h.http.get(&h.url("/work/cgi-bin/get_jsapi_ticket")).await;
    assert_eq!(ticket_of(&corp_call), *corp);
    let agent_call = h
        .http
        .get(&h.url("/work/cgi-bin/ticket/get?type=agent_config"))
        .await;
    assert_eq!(ticket_of(&agent_call), *agent);
    assert_eq!(h.fake.ticket_fetches("corp"), 1);
    assert_eq!(h.fake.ticket_fetches("agent"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ticket_wechat_renews_only_in_its_last_seconds_is_never_handed_out_then() {
    // WeChat hands back the old ticket until it has 5 s of its 10 left.
    let fake = Harness::fake_with(FakeOptions {
        ticket_lifetime: Duration::from_secs(10),
        ticket_renew_within: Duration::from_secs(5),
        ..FakeOptions::default()
    })
    .await;
    let config = ConfigBuilder::new(&fake)
        .mp("stable")
        .app_line("refresh_before_expiry_s = 8");
    let h = Harness::start(fake, config).await;

    // A page asks every 200 ms through the first ticket's whole life.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen: Vec<String> = Vec::new();
    while std::time::Instant::now() < until {
        let r = h.http.get(&h.url(GET_JSAPI)).await;
        let ticket = ticket_of(&r);
        let truth = h.fake.ticket_life_left(&ticket);
        let said = r.json()["expires_in"].as_u64().unwrap();
        assert!(
            truth >= Duration::from_secs(2),
            "{ticket} handed out with {truth:?} to live"
        );
        assert!(
            said <= truth.as_secs() + 1,
            "{ticket}: said {said} s, {truth:?} true"
        );
        if !seen.contains(&ticket) {
            seen.push(ticket);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen.len() >= 2, "never renewed: {seen:?}");
}
