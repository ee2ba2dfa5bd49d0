//! Prometheus metrics, served on the admin listener at `/metrics`.
//!
//! Label values stay bounded: app names come from the config, statuses and
//! errcodes are numbers, refresh reasons and results are fixed words. Paths
//! and tokens are never labels.
//!
//! The request path touches pre-resolved per-app handles ([`AppMetrics`]), so
//! counting a request is an atomic add, not a map lookup.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::token::{Reason, RefreshObserver, TokenManager};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabel {
    app: String,
}

/// A platform's authorizer token fetches: by platform, never by authorizer
/// (thousands of appids would swamp Prometheus).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthorizerRefreshLabels {
    platform: String,
    reason: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    app: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrcodeLabels {
    app: String,
    errcode: i64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshLabels {
    app: String,
    reason: &'static str,
    result: &'static str,
}

/// Every metric the proxy exports.
pub struct Metrics {
    /// Owns the metric descriptions for encoding.
    registry: Registry,
    /// `wechat_proxy_requests_total{app,status}`.
    requests: Family<RequestLabels, Counter>,
    /// `wechat_proxy_upstream_errcode_total{app,errcode}`, non-zero only.
    errcodes: Family<ErrcodeLabels, Counter>,
    /// `wechat_proxy_retries_total{app}`.
    retries: Family<AppLabel, Counter>,
    /// `wechat_proxy_token_refreshes_total{app,reason,result}`.
    refreshes: Family<RefreshLabels, Counter>,
    /// `wechat_proxy_token_fights_total{app}`: tokens rejected well within
    /// their life, i.e. another system fetching tokens for the same appid.
    fights: Family<AppLabel, Counter>,
    /// `wechat_proxy_authorizer_token_refreshes_total{platform,reason,result}`.
    authorizer_refreshes: Family<AuthorizerRefreshLabels, Counter>,
    /// `wechat_proxy_token_expires_in_seconds{app}`, set at scrape time.
    expires_in: Family<AppLabel, Gauge>,
    /// `wechat_proxy_upstream_duration_seconds{app}`.
    upstream: Family<AppLabel, Histogram>,
    /// `wechat_proxy_token_quota_remaining{app}`: WeChat's `remain`, mp
    /// apps only, from the last quota reading.
    quota_remaining: Family<AppLabel, Gauge>,
    /// `wechat_proxy_upstream_failovers_total{app}`: switches of the WeChat
    /// host an app's calls go to.
    failovers: Family<AppLabel, Counter>,
}

/// One app's hot-path handles (clones share the counters in [`Metrics`]).
#[derive(Clone)]
pub struct AppMetrics {
    /// The app's name, for the rarer labelled metrics.
    app: String,
    /// Requests answered 200, by far the most common status.
    ok: Counter,
    /// Requests retried after a token error.
    retries: Counter,
    /// Upstream latency until response headers.
    upstream: Histogram,
    /// Token fights; held so the series exists before the first one.
    _fights: Counter,
    /// Back to the families for other statuses and errcodes.
    metrics: Arc<Metrics>,
}

fn upstream_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let requests = Family::default();
        let errcodes = Family::default();
        let retries = Family::default();
        let refreshes = Family::default();
        let fights = Family::default();
        let authorizer_refreshes = Family::default();
        let expires_in = Family::default();
        let upstream = Family::new_with_constructor(upstream_histogram as fn() -> Histogram);
        let quota_remaining = Family::default();
        let failovers = Family::default();
        registry.register(
            "wechat_proxy_requests",
            "Requests answered, by app and HTTP status",
            requests.clone(),
        );
        registry.register(
            "wechat_proxy_upstream_errcode",
            "Non-zero WeChat errcodes seen in inspected responses",
            errcodes.clone(),
        );
        registry.register(
            "wechat_proxy_retries",
            "Requests retried after a token error",
            retries.clone(),
        );
        registry.register(
            "wechat_proxy_token_refreshes",
            "Token fetches, by reason (startup, ahead, on_demand, token_error, admin) and result (ok, error)",
            refreshes.clone(),
        );
        registry.register(
            "wechat_proxy_token_fights",
            "Tokens WeChat rejected well within their life: another system is fetching tokens for the same appid",
            fights.clone(),
        );
        registry.register(
            "wechat_proxy_authorizer_token_refreshes",
            "Authorizer token fetches of a third-party platform, by platform (never by authorizer), reason and result",
            authorizer_refreshes.clone(),
        );
        registry.register(
            "wechat_proxy_token_expires_in_seconds",
            "Seconds of life left on the held token (0 when none is valid)",
            expires_in.clone(),
        );
        registry.register(
            "wechat_proxy_upstream_duration_seconds",
            "Time from sending a request to WeChat until its response headers",
            upstream.clone(),
        );
        registry.register(
            "wechat_proxy_token_quota_remaining",
            "Token API calls left today as WeChat reports them (openapi/quota/get; mp apps only)",
            quota_remaining.clone(),
        );
        registry.register(
            "wechat_proxy_upstream_failovers",
            "Switches of the WeChat host an app's calls go to: to a fallback when the one in use fails, back when the primary answers again",
            failovers.clone(),
        );
        Arc::new(Metrics {
            quota_remaining,
            failovers,
            registry,
            requests,
            errcodes,
            retries,
            refreshes,
            fights,
            authorizer_refreshes,
            expires_in,
            upstream,
        })
    }

    /// The hot-path handles for `app`.
    pub fn app(self: &Arc<Self>, app: &str) -> AppMetrics {
        let label = AppLabel {
            app: app.to_owned(),
        };
        AppMetrics {
            app: app.to_owned(),
            ok: self.requests.get_or_create_owned(&RequestLabels {
                app: app.to_owned(),
                status: 200,
            }),
            retries: self.retries.get_or_create_owned(&label),
            // Exported from the start (as 0), so an alert on its increase
            // sees the first fight.
            _fights: self.fights.get_or_create_owned(&label),
            upstream: self.upstream.get_or_create_owned(&label),
            metrics: self.clone(),
        }
    }

    /// The counter of `app`'s WeChat host switches, exported from the start
    /// (as 0) so an alert on its increase sees the first one.
    pub fn failovers(&self, app: &str) -> Counter {
        self.failovers.get_or_create_owned(&AppLabel {
            app: app.to_owned(),
        })
    }

    /// Counts a request that named no known app.
    pub fn unrouted(&self, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                app: "-".into(),
                status,
            })
            .inc();
    }

    /// Records WeChat's `remain` for `app`'s token API.
    pub fn quota_remaining(&self, app: &str, remain: u64) {
        self.quota_remaining
            .get_or_create(&AppLabel {
                app: app.to_owned(),
            })
            .set(i64::try_from(remain).unwrap_or(i64::MAX));
    }

    /// The exposition text, with token lifetimes read now.
    pub fn encode(&self, apps: &[Arc<TokenManager>]) -> String {
        for tokens in apps {
            let left = tokens.status().expires_in.map_or(0, |d| d.as_secs());
            self.expires_in
                .get_or_create(&AppLabel {
                    app: tokens.app().name.clone(),
                })
                .set(left as i64);
        }
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl AppMetrics {
    /// Counts an answered request.
    pub fn request(&self, status: u16) {
        if status == 200 {
            self.ok.inc();
        } else {
            self.metrics
                .requests
                .get_or_create(&RequestLabels {
                    app: self.app.clone(),
                    status,
                })
                .inc();
        }
    }

    /// Counts a non-zero errcode read from an answer.
    pub fn errcode(&self, errcode: i64) {
        if errcode != 0 {
            self.metrics
                .errcodes
                .get_or_create(&ErrcodeLabels {
                    app: self.app.clone(),
                    errcode,
                })
                .inc();
        }
    }

    /// Counts a retry after a token error.
    pub fn retry(&self) {
        self.retries.inc();
    }

    /// Records how long WeChat took to answer.
    pub fn upstream(&self, took: Duration) {
        self.upstream.observe(took.as_secs_f64());
    }
}

/// The observer of a platform's authorizer token managers, one for all of
/// them: counts under the platform's name whatever authorizer fetched.
pub struct AuthorizerObserver {
    /// Where to count.
    metrics: Arc<Metrics>,
    /// The platform's name, the only label that names where a fetch was.
    platform: String,
}

impl AuthorizerObserver {
    /// Counts `platform`'s authorizer fetches in `metrics`.
    pub fn new(metrics: Arc<Metrics>, platform: &str) -> AuthorizerObserver {
        AuthorizerObserver {
            metrics,
            platform: platform.to_owned(),
        }
    }
}

impl RefreshObserver for AuthorizerObserver {
    fn refreshed(&self, _authorizer: &str, reason: Reason, ok: bool) {
        self.metrics
            .authorizer_refreshes
            .get_or_create(&AuthorizerRefreshLabels {
                platform: self.platform.clone(),
                reason: reason.as_str(),
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    fn fight(&self, _authorizer: &str) {
        self.metrics.fight(&self.platform);
    }
}

impl RefreshObserver for Metrics {
    fn refreshed(&self, app: &str, reason: Reason, ok: bool) {
        self.refreshes
            .get_or_create(&RefreshLabels {
                app: app.to_owned(),
                reason: reason.as_str(),
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    fn fight(&self, app: &str) {
        self.fights
            .get_or_create(&AppLabel {
                app: app.to_owned(),
            })
            .inc();
    }
}
