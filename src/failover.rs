//! Which of an app's WeChat hosts its calls go to: `base_url` while it
//! answers, else the next of `fallback_base_urls`, and back to `base_url`
//! once it answers again.
//!
//! The [`upstream`](crate::upstream) client asks [`Hosts`] where each request
//! goes, so API calls and token fetches fail over alike. A request whose
//! connection could not be made (refused, reset, TLS failed, not made within
//! `connect_timeout_ms`) was never written: it goes to the next host at once
//! and the caller sees no error. A host that accepts connections but answers
//! nothing is found by its silence: when a request has waited
//! `connect_timeout_ms` and the host has answered nothing since it was sent,
//! later requests go to the next host (the ones already waiting there get
//! their timeout). A streamed upload is not watched so: the host is quiet
//! for as long as the client takes to send it. Either way the switch is logged and counted; while a
//! fallback serves, the primary is probed every [`PROBE_EVERY`] with a
//! request that carries no credential, and traffic returns on its first
//! answer.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{header, Request, Uri};
use prometheus_client::metrics::counter::Counter;

use crate::body::ProxyBody;
use crate::config::BaseUrl;

/// How often a primary that failed is tried again. Traffic returns within
/// this plus one probe's bound after it heals.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// An app's hosts and the one in use.
pub struct Hosts {
    /// The app (or platform) name, for logs.
    app: String,
    /// `base_url` first, then the fallbacks in config order.
    hosts: Vec<BaseUrl>,
    /// Index into `hosts` of the host new requests go to.
    active: AtomicUsize,
    /// What each host has been doing, for telling a hung one.
    health: Mutex<Vec<Health>>,
    /// A host silent this long under a waiting request counts as hung; and
    /// the bound of one probe's connection.
    hang_after: Duration,
    /// `wechat_proxy_upstream_failovers_total{app}`.
    failovers: Counter,
    /// Whether the task probing the primary runs.
    probing: AtomicBool,
}

/// Requests waiting on one host.
#[derive(Default, Clone, Copy)]
struct Health {
    /// Requests sent and not yet answered or given up.
    pending: usize,
    /// Since when requests have been waiting with no answer from the host;
    /// `None` while none waits.
    silent_since: Option<Instant>,
}

impl Hosts {
    /// `base_url` and its fallbacks; `None` when there are no fallbacks, so
    /// an app without them pays nothing per request.
    pub fn new(
        app: &str,
        base_url: &BaseUrl,
        fallbacks: &[BaseUrl],
        hang_after: Duration,
        failovers: Counter,
    ) -> Option<Arc<Hosts>> {
        if fallbacks.is_empty() {
            return None;
        }
        let hosts: Vec<BaseUrl> = std::iter::once(base_url)
            .chain(fallbacks)
            .cloned()
            .collect();
        Some(Arc::new(Hosts {
            app: app.to_owned(),
            health: Mutex::new(vec![Health::default(); hosts.len()]),
            hosts,
            active: AtomicUsize::new(0),
            hang_after,
            failovers,
            probing: AtomicBool::new(false),
        }))
    }

    /// The base URL requests go to now.
    pub fn active(&self) -> &BaseUrl {
        &self.hosts[self.active.load(Ordering::Relaxed)]
    }

    /// The base URL of the primary (`base_url`).
    pub fn primary(&self) -> &BaseUrl {
        &self.hosts[0]
    }

    /// Whether `uri` is one the proxy built on `base_url`: only those are
    /// moved to another host.
    pub fn aims_at_primary(&self, uri: &Uri) -> bool {
        let primary = self.primary();
        uri.scheme() == Some(&primary.scheme)
            && uri.authority() == Some(&primary.authority)
            && uri.path().starts_with(primary.path.as_str())
    }

    /// The order in which a new request tries the hosts: the one in use
    /// (unless it went silent under waiting requests: then the switch
    /// happens here), then the others, wrapping round.
    pub fn order(self: &Arc<Self>) -> impl Iterator<Item = usize> {
        let mut first = self.active.load(Ordering::Relaxed);
        if self.hung(first) {
            let next = (first + 1) % self.hosts.len();
            self.switch(first, next, "it answered nothing while requests waited");
            first = next;
        }
        let n = self.hosts.len();
        (0..n).map(move |k| (first + k) % n)
    }

    /// Whether host `i` has had requests waiting for `hang_after` without
    /// answering any.
    fn hung(&self, i: usize) -> bool {
        let health = self.health.lock().expect("hosts lock");
        health[i].pending > 0
            && health[i]
                .silent_since
                .is_some_and(|t| t.elapsed() >= self.hang_after)
    }

    /// Points `request`, aimed at host `from`, at host `to`: scheme, host,
    /// path prefix and `Host` header.
    pub fn aim(&self, request: &mut Request<ProxyBody>, from: usize, to: usize) {
        if from == to {
            return;
        }
        let prefix = self.hosts[from].path.len();
        let to = &self.hosts[to];
        let uri = request.uri();
        let rest = uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .get(prefix..)
            .unwrap_or("/");
        let mut path = String::with_capacity(to.path.len() + rest.len());
        path.push_str(&to.path);
        path.push_str(rest);
        if let Ok(uri) = Uri::builder()
            .scheme(to.scheme.clone())
            .authority(to.authority.clone())
            .path_and_query(path)
            .build()
        {
            *request.uri_mut() = uri;
            request.headers_mut().insert(header::HOST, to.host.clone());
        }
    }

    /// Notes a request sent to host `i`; the guard notes how it ended.
    pub fn sent(self: &Arc<Self>, i: usize) -> InFlight {
        let mut health = self.health.lock().expect("hosts lock");
        let h = &mut health[i];
        h.pending += 1;
        let now = Instant::now();
        if h.silent_since.is_none() {
            h.silent_since = Some(now);
        }
        InFlight {
            hosts: self.clone(),
            host: i,
            sent: now,
            ended: false,
        }
    }

    /// Host `i` answered a request that was not watched for silence.
    pub fn spoke(&self, i: usize) {
        let mut health = self.health.lock().expect("hosts lock");
        let h = &mut health[i];
        h.silent_since = (h.pending > 0).then(Instant::now);
    }

    /// Makes `to` the host in use if `from` still is: logs, counts and, away
    /// from the primary, starts probing it. Concurrent requests that saw the
    /// same failure switch once.
    pub fn switch(&self, from: usize, to: usize, why: &str) -> bool {
        if from == to
            || self
                .active
                .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        self.failovers.inc();
        tracing::warn!(
            app = %self.app,
            from = %self.hosts[from],
            to = %self.hosts[to],
            reason = why,
            "switched WeChat host"
        );
        true
    }

    /// Whether a fallback serves now, so the primary needs probing; marks
    /// the probe as running (the caller starts it) when none runs yet.
    pub fn start_probing(&self) -> bool {
        self.active.load(Ordering::Relaxed) != 0 && !self.probing.swap(true, Ordering::Relaxed)
    }

    /// Whether the probe should go on: a fallback still serves. Clears the
    /// running mark when it stops.
    pub fn keep_probing(&self) -> bool {
        if self.active.load(Ordering::Relaxed) == 0 {
            self.probing.store(false, Ordering::Relaxed);
            // A switch away that came just now finds the mark clear and
            // starts a probe of its own.
            return false;
        }
        true
    }

    /// The primary answered a probe: requests go back to it.
    pub fn healed(&self) {
        let from = self.active.load(Ordering::Relaxed);
        self.switch(from, 0, "it answers again");
    }

    /// The bound of one probe: its connection and its answer.
    pub fn probe_timeout(&self) -> Duration {
        self.hang_after
    }

    fn ended(&self, host: usize, sent: Instant, answered: bool) {
        let mut health = self.health.lock().expect("hosts lock");
        let h = &mut health[host];
        h.pending -= 1;
        if answered {
            // The host speaks: the requests still waiting count from now.
            h.silent_since = (h.pending > 0).then(Instant::now);
            return;
        }
        let gave_up_silent =
            sent.elapsed() >= self.hang_after && h.silent_since.is_some_and(|since| since <= sent);
        if h.pending == 0 {
            h.silent_since = None;
        }
        drop(health);
        // A request dropped (timed out) after waiting in silence: the host
        // hung, though nothing waits on it now to show it.
        if gave_up_silent {
            let next = (host + 1) % self.hosts.len();
            self.switch(host, next, "it answered nothing while requests waited");
        }
    }
}

/// A request waiting on a host. Dropped without [`InFlight::answered`] or
/// [`InFlight::not_sent`], it counts as unanswered.
pub struct InFlight {
    /// Whose health it updates.
    hosts: Arc<Hosts>,
    /// Which host.
    host: usize,
    /// When it went out.
    sent: Instant,
    /// Whether its end was already noted.
    ended: bool,
}

impl InFlight {
    /// The host answered (a response head came).
    pub fn answered(mut self) {
        self.ended = true;
        self.hosts.ended(self.host, self.sent, true);
    }

    /// Nothing was written: the connection failed. That says nothing about
    /// silence, so it ends as answered would, without speaking for the host.
    pub fn not_sent(mut self) {
        self.ended = true;
        let mut health = self.hosts.health.lock().expect("hosts lock");
        let h = &mut health[self.host];
        h.pending -= 1;
        if h.pending == 0 {
            h.silent_since = None;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.ended {
            self.hosts.ended(self.host, self.sent, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(hang_after: Duration) -> Arc<Hosts> {
        let base = |u: &str| BaseUrl::parse(u).unwrap();
        Hosts::new(
            "mp",
            &base("https://primary.test/prefix"),
            &[base("https://second.test"), base("http://third.test:8080")],
            hang_after,
            Counter::default(),
        )
        .unwrap()
    }

    #[test]
    fn no_fallbacks_no_failover() {
        let base = BaseUrl::parse("https://api.weixin.qq.com").unwrap();
        assert!(Hosts::new("mp", &base, &[], Duration::ZERO, Counter::default()).is_none());
    }

    #[test]
    fn a_request_is_aimed_at_another_host_with_its_prefix_and_host_header() {
        let hosts = hosts(Duration::from_secs(1));
        let mut request = Request::new(ProxyBody::empty());
        *request.uri_mut() = "https://primary.test/prefix/cgi-bin/user/info?a=1"
            .parse()
            .unwrap();
        assert!(hosts.aims_at_primary(request.uri()));
        hosts.aim(&mut request, 0, 2);
        assert_eq!(
            request.uri().to_string(),
            "http://third.test:8080/cgi-bin/user/info?a=1"
        );
        assert_eq!(request.headers()[header::HOST], "third.test:8080");
        hosts.aim(&mut request, 2, 0);
        assert_eq!(
            request.uri().to_string(),
            "https://primary.test/prefix/cgi-bin/user/info?a=1"
        );
    }

    #[test]
    fn other_hosts_are_not_moved() {
        let hosts = hosts(Duration::from_secs(1));
        assert!(!hosts.aims_at_primary(&"https://elsewhere.test/x".parse().unwrap()));
    }

    #[test]
    fn order_starts_at_the_host_in_use_and_wraps() {
        let hosts = hosts(Duration::from_secs(60));
        assert_eq!(hosts.order().collect::<Vec<_>>(), [0, 1, 2]);
        assert!(hosts.switch(0, 2, "test"));
        assert!(!hosts.switch(0, 1, "a second request saw the same failure"));
        assert_eq!(hosts.order().collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(hosts.failovers.get(), 1);
    }

    #[test]
    fn a_host_silent_under_a_waiting_request_is_left() {
        let hosts = hosts(Duration::ZERO);
        let waiting = hosts.sent(0);
        assert_eq!(hosts.order().next(), Some(1), "silent while one waits");
        assert_eq!(hosts.active().to_string(), "https://second.test");
        drop(waiting);
    }

    #[test]
    fn an_answer_ends_the_silence() {
        let hosts = hosts(Duration::from_millis(50));
        let slow = hosts.sent(0);
        std::thread::sleep(Duration::from_millis(60));
        hosts.sent(0).answered();
        assert_eq!(hosts.order().next(), Some(0), "it answered another request");
        slow.answered();
        assert_eq!(hosts.failovers.get(), 0);
    }

    #[test]
    fn a_request_given_up_in_silence_moves_traffic() {
        let hosts = hosts(Duration::ZERO);
        drop(hosts.sent(0));
        assert_eq!(hosts.order().next(), Some(1));
        assert_eq!(hosts.failovers.get(), 1);
    }

    #[test]
    fn an_answer_to_an_unwatched_request_ends_the_silence() {
        let hosts = hosts(Duration::from_millis(50));
        let slow = hosts.sent(0);
        std::thread::sleep(Duration::from_millis(60));
        hosts.spoke(0);
        assert_eq!(hosts.order().next(), Some(0));
        slow.answered();
    }

    #[test]
    fn a_failed_connection_is_not_silence() {
        let hosts = hosts(Duration::ZERO);
        hosts.sent(0).not_sent();
        assert_eq!(hosts.order().next(), Some(0));
    }
}
