//! User logins through the proxy: an app's Mini Program and web logins reach WeChat with
//! the app's own appid and AppSecret (whatever the client sent is dropped); the user's own
//! OAuth calls keep the user's token; a platform's logins carry its component token.

mod common;

use common::fake_wechat::{FakeWeChat, USER_TOKEN};
use common::setup::{platform, Harness, ADMIN_KEY, COMPONENT, MP_APPID, SECRET};

const AUTHORIZER: &str = "wx00000000000000a1";

/// Every value of `name` in a raw query.
fn values(query: &Option<String>, name: &str) -> Vec<String> {
    query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| value.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mini_program_login_gets_the_apps_secret_and_drops_the_clients() {
    let h = Harness::mp("stable").await;

    let r = h
        .http
        .get(&h.url(
            "/sns/jscode2session?appid=wx0000000000000bad&secret=dummy&js_code=CODE&grant_type=authorization_code&access_token=placeholder",
        ))
        .await;

    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["openid"], "o-user-1", "{}", r.text());
    let seen = h.fake.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].token_ok, "{:?}", seen[0].query);
    assert_eq!(values(&seen[0].query, "appid"), [MP_APPID]);
    assert_eq!(values(&seen[0].query, "secret").len(), 1);
    assert_eq!(values(&seen[0].query, "js_code"), ["CODE"]);
    assert!(values(&seen[0].query, "access_token").is_empty());
    assert!(!r.text().contains(SECRET));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_web_login_gets_the_apps_secret_and_one_grant_type() {
    let h = Harness::mp("classic").await;

    let r = h
        .http
        .get(&h.url("/sns/oauth2/access_token?code=C1&grant_type=client_credential"))
        .await;

    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["access_token"],
        USER_TOKEN,
        "the user's token passes through"
    );
    let seen = h.fake.requests();
    assert!(seen[0].token_ok, "{:?}", seen[0].query);
    assert_eq!(values(&seen[0].query, "grant_type"), ["authorization_code"]);
    assert_eq!(values(&seen[0].query, "code"), ["C1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_users_own_oauth_calls_keep_the_users_token_and_get_no_secret() {
    let h = Harness::mp("stable").await;

    for path in [
        "/sns/oauth2/refresh_token?appid=wx1234567890abcdef&grant_type=refresh_token&refresh_token=R",
        "/sns/auth?openid=o-user-1",
        "/sns/userinfo?openid=o-user-1&lang=zh_CN",
    ] {
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = h
            .http
            .get(&h.url(&format!("{path}{sep}access_token={USER_TOKEN}")))
            .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    for seen in h.fake.requests() {
        assert!(seen.token_ok, "{} {:?}", seen.path, seen.query);
        assert_eq!(values(&seen.query, "access_token"), [USER_TOKEN]);
        assert!(values(&seen.query, "secret").is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn other_secrets_stay_refused() {
    let h = Harness::mp("stable").await;

    for path in [
        "/cgi-bin/user/info?openid=o&secret=s",
        "/sns/jscode2session?js_code=C&appsecret=s",
    ] {
        let r = h.http.get(&h.url(path)).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text());
    }
    assert!(h.fake.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_platforms_logins_carry_its_component_appid_and_live_token() {
    let fake = FakeWeChat::start().await;
    let (proxy, http) = platform(&fake).await;

    for path in [
        format!("/saas/sns/oauth2/component/access_token?appid={AUTHORIZER}&code=C&grant_type=authorization_code&component_appid=wrong&component_access_token={}", "WECHAT_TOKEN_PROXY_PLACEHOLDER"),
        format!("/saas/sns/oauth2/component/refresh_token?appid={AUTHORIZER}&grant_type=refresh_token&refresh_token=R"),
        format!("/saas/sns/component/jscode2session?appid={AUTHORIZER}&js_code=J&grant_type=authorization_code"),
    ] {
        let r = http.get(&format!("{}{path}", proxy.url)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(r.json().get("errcode").is_none(), "{path}: {}", r.text());
    }
    let seen = fake.requests();
    assert_eq!(seen.len(), 3);
    for seen in seen {
        assert!(seen.token_ok, "{} {:?}", seen.path, seen.query);
        assert_eq!(values(&seen.query, "component_appid"), [COMPONENT]);
        assert_eq!(values(&seen.query, "appid"), [AUTHORIZER]);
        assert!(values(&seen.query, "access_token").is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn under_an_authorizer_a_login_goes_through_the_platform_never_a_secret() {
    let fake = FakeWeChat::start().await;
    fake.add_authorizer(AUTHORIZER, "REFRESH-A");
    let (proxy, http) = platform(&fake).await;
    let register = http::Request::put(format!(
        "{}/platforms/saas/authorizers/{AUTHORIZER}",
        proxy.admin_url
    ))
    .header("content-type", "application/json")
    .header("authorization", format!("Bearer {ADMIN_KEY}"))
    .body(http_body_util::Full::new(bytes::Bytes::from_static(
        br#"{"refresh_token":"REFRESH-A"}"#,
    )))
    .unwrap();
    let registered = http.send(register).await;
    assert!(registered.status < 300, "{}", registered.text());

    // The account's own secret login has no secret here: refused, naming the way that works.
    let own = http
        .get(&format!(
            "{}/saas/{AUTHORIZER}/sns/jscode2session?js_code=J&grant_type=authorization_code",
            proxy.url
        ))
        .await;
    assert_eq!(own.status, 404, "{}", own.text());
    assert!(
        own.text().contains("/saas/sns/component/jscode2session"),
        "{}",
        own.text()
    );
    // The platform's login under the authorizer's prefix gets the component's credentials.
    let r = http
        .get(&format!(
            "{}/saas/{AUTHORIZER}/sns/component/jscode2session?appid={AUTHORIZER}&js_code=J&grant_type=authorization_code",
            proxy.url
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = fake.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].token_ok, "{:?}", seen[0].query);
    assert_eq!(values(&seen[0].query, "component_appid"), [COMPONENT]);
}
