//! The one place that knows the proxy's config format: builds configs for the
//! tests and starts a fake WeChat server with a proxy in front of it.

use std::time::Duration;

use super::fake_wechat::{AppKind, FakeOptions, FakeWeChat};
use super::{wait_until_async, Http, Proxy};

/// The AppSecret every test app uses; must never show up in a log.
pub const SECRET: &str = "test-app-secret-do-not-log-7d3f9a";
/// The appid of the default mp app.
pub const MP_APPID: &str = "wx1234567890abcdef";
/// The corpid of the WeCom app.
pub const CORP_ID: &str = "ww1234567890abcdef";
/// The variable the configs name in `secret_env`.
pub const SECRET_VAR: &str = "TEST_APP_SECRET";

/// The smallest valid app table, for tests that write config text by hand.
pub const APP_TOML: &str = r#"
[apps.mp]
kind = "mp"
appid = "wx1234567890abcdef"
secret_env = "TEST_APP_SECRET"
"#;

/// The environment a proxy needs for the configs below.
pub fn env() -> [(&'static str, &'static str); 1] {
    [(SECRET_VAR, SECRET)]
}

/// A config file, section by section.
pub struct ConfigBuilder {
    proxy: Vec<String>,
    upstream: Vec<String>,
    apps: Vec<Vec<String>>,
    log: Vec<String>,
    base_url: String,
}

impl ConfigBuilder {
    /// Loopback listeners on free ports, the fake's CA trusted, and short
    /// token-fetch backoffs so failure tests run in seconds.
    pub fn new(fake: &FakeWeChat) -> ConfigBuilder {
        ConfigBuilder {
            proxy: vec![
                r#"listen = "127.0.0.1:0""#.into(),
                r#"admin_listen = "127.0.0.1:0""#.into(),
            ],
            upstream: vec![
                format!("ca_file = {:?}", fake.ca_file.display().to_string()),
                "token_timeout_ms = 2000".into(),
                "token_retry_min_ms = 200".into(),
                "token_retry_max_ms = 1000".into(),
            ],
            apps: Vec::new(),
            log: Vec::new(),
            base_url: fake.base_url.clone(),
        }
    }

    /// Sends the apps added after this call to `url` instead of the fake (a relay in
    /// front of it, say).
    pub fn base_url(mut self, url: &str) -> ConfigBuilder {
        self.base_url = url.into();
        self
    }

    /// Adds an mp app named `name` with `appid`, on `token_api`.
    pub fn mp_app(mut self, name: &str, appid: &str, token_api: &str) -> ConfigBuilder {
        self.apps.push(vec![
            format!("[apps.{name}]"),
            r#"kind = "mp""#.into(),
            format!("appid = {appid:?}"),
            format!("secret_env = {SECRET_VAR:?}"),
            format!("token_api = {token_api:?}"),
            format!("base_url = {:?}", self.base_url),
        ]);
        self
    }

    /// Adds the mp app `mp` with [`MP_APPID`], its secret read from `file`.
    pub fn mp_file_secret(mut self, token_api: &str, file: &std::path::Path) -> ConfigBuilder {
        self = self.mp(token_api);
        let app = self.apps.last_mut().unwrap();
        app.retain(|l| !l.starts_with("secret_env"));
        app.push(format!("secret_file = {:?}", file.display().to_string()));
        self
    }

    /// Adds the mp app `mp` with [`MP_APPID`].
    pub fn mp(self, token_api: &str) -> ConfigBuilder {
        self.mp_app("mp", MP_APPID, token_api)
    }

    /// Adds a WeCom app named `name` with [`CORP_ID`].
    pub fn wecom(mut self, name: &str) -> ConfigBuilder {
        self.apps.push(vec![
            format!("[apps.{name}]"),
            r#"kind = "wecom""#.into(),
            format!("corpid = {CORP_ID:?}"),
            format!("secret_env = {SECRET_VAR:?}"),
            format!("base_url = {:?}", self.base_url),
        ]);
        self
    }

    /// Adds a line to the last app's table.
    pub fn app_line(mut self, line: &str) -> ConfigBuilder {
        set_line(
            self.apps.last_mut().expect("add an app before its lines"),
            line,
        );
        self
    }

    /// Adds a line to `[proxy]`.
    pub fn proxy_line(mut self, line: &str) -> ConfigBuilder {
        set_line(&mut self.proxy, line);
        self
    }

    /// Adds a line to `[upstream]`.
    pub fn upstream_line(mut self, line: &str) -> ConfigBuilder {
        set_line(&mut self.upstream, line);
        self
    }

    /// Adds a line to `[log]`.
    pub fn log_line(mut self, line: &str) -> ConfigBuilder {
        set_line(&mut self.log, line);
        self
    }

    /// The TOML text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, lines) in [
            ("proxy", &self.proxy),
            ("upstream", &self.upstream),
            ("log", &self.log),
        ] {
            out.push_str(&format!("[{name}]\n{}\n\n", lines.join("\n")));
        }
        for app in &self.apps {
            out.push_str(&app.join("\n"));
            out.push_str("\n\n");
        }
        out
    }
}

/// Adds `key = value` to a section, replacing an earlier line for the same
/// key (TOML refuses duplicates).
fn set_line(section: &mut Vec<String>, line: &str) {
    let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_owned();
    section.retain(|l| key(l) != key(line));
    section.push(line.into());
}

/// A fake WeChat server, a proxy in front of it, and a client.
pub struct Harness {
    /// The fake WeChat server.
    pub fake: FakeWeChat,
    /// The proxy process.
    pub proxy: Proxy,
    /// A keep-alive client.
    pub http: Http,
}

impl Harness {
    /// A default fake with one mp app on `token_api`, and a ready proxy.
    pub async fn mp(token_api: &str) -> Harness {
        let fake = FakeWeChat::start().await;
        fake.add_app(AppKind::Mp, MP_APPID, SECRET);
        let config = ConfigBuilder::new(&fake).mp(token_api);
        Harness::start(fake, config).await
    }

    /// A fake with `opts` and the mp app registered.
    pub async fn fake_with(opts: FakeOptions) -> FakeWeChat {
        let fake = FakeWeChat::start_with(opts).await;
        fake.add_app(AppKind::Mp, MP_APPID, SECRET);
        fake
    }

    /// Starts a proxy with `config` in front of `fake` and waits until it is
    /// ready (every app holds a token).
    pub async fn start(fake: FakeWeChat, config: ConfigBuilder) -> Harness {
        let harness = Harness::start_unready(fake, config);
        harness.wait_ready().await;
        harness
    }

    /// Starts a proxy without waiting for readiness.
    pub fn start_unready(fake: FakeWeChat, config: ConfigBuilder) -> Harness {
        let proxy = Proxy::start(&config.render(), &env());
        Harness {
            fake,
            proxy,
            http: Http::new(),
        }
    }

    /// A URL on the proxy listener.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.proxy.url)
    }

    /// A URL on the admin listener.
    pub fn admin(&self, path: &str) -> String {
        format!("{}{path}", self.proxy.admin_url)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let http = self.http.clone();
        let url = self.admin("/readyz");
        wait_until_async("the proxy to be ready", Duration::from_secs(10), || {
            let http = http.clone();
            let url = url.clone();
            async move { http.get(&url).await.status == 200 }
        })
        .await;
    }
}

/// The component_appid of the platform [`platform`] starts.
pub const COMPONENT: &str = "wx00000000000000c0";
/// Its component_appsecret.
pub const COMPONENT_SECRET: &str = "component-secret-0123456789abcdef";
/// The admin key of the proxy [`platform`] starts.
pub const ADMIN_KEY: &str = "admin-key-0123456789abcdef-0123456789";

/// A proxy serving the platform `saas` in front of `fake`, its ticket pushed
/// through the admin listener, ready; and a client.
pub async fn platform(fake: &FakeWeChat) -> (Proxy, Http) {
    fake.add_platform(COMPONENT, COMPONENT_SECRET);
    fake.push_ticket(COMPONENT, "ticket-1");
    let config = format!(
        r#"[proxy]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_key_env = "ADMIN_KEY"

[upstream]
ca_file = {ca:?}

[platforms.saas]
component_appid = "{COMPONENT}"
secret_env = "SAAS_SECRET"
base_url = "{base}"
"#,
        ca = fake.ca_file.display().to_string(),
        base = fake.base_url,
    );
    let proxy = Proxy::start(
        &config,
        &[("SAAS_SECRET", COMPONENT_SECRET), ("ADMIN_KEY", ADMIN_KEY)],
    );
    let http = Http::new();
    let request = http::Request::post(format!("{}/platforms/saas/ticket", proxy.admin_url))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"component_verify_ticket":"ticket-1"}"#,
        )))
        .expect("a request");
    assert_eq!(http.send(request).await.text(), "success");
    let ready = format!("{}/readyz", proxy.admin_url);
    wait_until_async("the platform to be ready", Duration::from_secs(10), || {
        let (http, url) = (http.clone(), ready.clone());
        async move { http.get(&url).await.status == 200 }
    })
    .await;
    (proxy, http)
}
