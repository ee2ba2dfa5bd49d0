//! A real `redis-server` on a free loopback port, for the Redis store tests. No mock: the
//! proxy talks to the Debian `redis-server` over TCP, as in production.
//!
//! The server keeps nothing on disk (`--save '' --appendonly no`), so a stop and start
//! loses every key, like a restarted cache. `stop` and `start` reuse the same port, so a
//! proxy configured with the URL sees an outage and then Redis coming back. With
//! [`RedisServer::start_tls`] it speaks only TLS, with a certificate for `localhost` from a
//! throwaway CA whose PEM file ([`RedisServer::ca_file`]) a proxy trusts via `SSL_CERT_FILE`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `redis-server` may take to answer PING after it was started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running (or stopped) `redis-server`. Dropping it kills the process.
pub struct RedisServer {
    /// The loopback port, kept across `stop` and `start`.
    pub port: u16,
    /// `requirepass`, if the server was started with one.
    password: Option<String>,
    /// The process while it runs.
    child: Option<Child>,
    /// TLS only (`rediss://`), with the certificate files in `dir`.
    tls: bool,
    /// Its working directory (nothing is written there, but it must exist).
    dir: PathBuf,
    /// More `redis-server` arguments (`--replicaof …`).
    args: Vec<String>,
}

impl RedisServer {
    /// Starts a server without a password.
    pub fn start() -> RedisServer {
        RedisServer::start_with(None, false)
    }

    /// Starts a server that requires `password`.
    pub fn start_with_password(password: &str) -> RedisServer {
        RedisServer::start_with(Some(password.to_owned()), false)
    }

    /// Starts a server that speaks only TLS, with a certificate for `localhost` signed by a
    /// fresh CA (see [`RedisServer::ca_file`]).
    pub fn start_tls() -> RedisServer {
        RedisServer::start_with(None, true)
    }

    /// Starts a replica of `primary`, and waits until it has synced.
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let replica = RedisServer::start_with_args(
            None,
            false,
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.port.to_string(),
            ],
        );
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !replica
            .info("replication")
            .contains("master_link_status:up")
        {
            assert!(Instant::now() < deadline, "the replica did not sync");
            std::thread::sleep(Duration::from_millis(50));
        }
        replica
    }

    /// `INFO section`.
    pub fn info(&self, section: &str) -> String {
        redis::cmd("INFO")
            .arg(section)
            .query(&mut self.connection())
            .expect("INFO")
    }

    fn start_with(password: Option<String>, tls: bool) -> RedisServer {
        RedisServer::start_with_args(password, tls, Vec::new())
    }

    fn start_with_args(password: Option<String>, tls: bool, args: Vec<String>) -> RedisServer {
        let dir =
            std::env::temp_dir().join(format!("wtp-redis-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("create the Redis working directory");
        if tls {
            write_certificates(&dir);
        }
        // Another process may grab the free port before redis-server binds it; try again.
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                password: password.clone(),
                child: None,
                tls,
                dir: dir.clone(),
                args: args.clone(),
            };
            if server.try_start() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// `redis://[:password@]127.0.0.1:PORT/0` (`rediss://localhost:PORT/0` with TLS), for
    /// the proxy's `[store] url`.
    pub fn url(&self) -> String {
        match (&self.password, self.tls) {
            (_, true) => format!("rediss://localhost:{}/0", self.port),
            (Some(p), false) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            (None, false) => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// The proxy's `[store]` table for keeping its state here.
    pub fn store_table(&self) -> String {
        format!("[store]\nkind = \"redis\"\nurl = {:?}\n", self.url())
    }

    /// The PEM file of the CA that signed a TLS server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A client for this server, trusting its CA when it speaks TLS.
    fn client(&self) -> redis::Client {
        if self.tls {
            let ca = std::fs::read(self.ca_file()).expect("read the test CA");
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca),
            };
            redis::Client::build_with_tls(self.url(), certs).expect("the test URL parses")
        } else {
            redis::Client::open(self.url()).expect("the test URL parses")
        }
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty; panics if it does not come up.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.try_start(),
            "redis-server did not start again on port {}",
            self.port
        );
    }

    /// A synchronous connection, for looking at what the proxies stored.
    pub fn connection(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to the test Redis")
    }

    /// The keys matching `pattern`, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut self.connection())
            .expect("KEYS");
        keys.sort();
        keys
    }

    /// `GET key`.
    pub fn get(&self, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(key)
            .query(&mut self.connection())
            .expect("GET")
    }

    /// `PTTL key` in milliseconds (-2: no such key, -1: no expiry).
    pub fn pttl(&self, key: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(key)
            .query(&mut self.connection())
            .expect("PTTL")
    }

    /// `SET key value PX ttl`.
    pub fn set_px(&self, key: &str, value: &str, ttl: Duration) {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query(&mut self.connection())
            .expect("SET");
    }

    /// Spawns `redis-server` on `self.port` and waits for PING; false if it exited (port
    /// taken). Panics with a clear message if `redis-server` is not installed.
    fn try_start(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        let port = self.port.to_string();
        if self.tls {
            command
                .args(["--port", "0", "--tls-port", &port])
                .args(["--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(self.dir.join("server.pem"))
                .arg("--tls-key-file")
                .arg(self.dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(self.ca_file());
        } else {
            command.args(["--port", &port]);
        }
        command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            command.args(["--requirepass", p]);
        }
        command.args(&self.args);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed, and the Redis store tests need a real one: \
                 apt-get install redis-server (.ci/run does this)"
            ),
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if self.pings() {
                return true;
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                self.child = None;
                return false;
            }
            if Instant::now() > deadline {
                panic!(
                    "redis-server on port {} did not answer PING within {STARTUP_TIMEOUT:?}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pings(&self) -> bool {
        let Ok(mut conn) = self
            .client()
            .get_connection_with_timeout(Duration::from_millis(200))
        else {
            return false;
        };
        redis::cmd("PING")
            .query::<String>(&mut conn)
            .is_ok_and(|pong| pong == "PONG")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes `ca.pem`, and `server.pem` / `server.key` for `localhost` signed by it, to `dir`.
fn write_certificates(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("generate CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("self-sign CA");
    let key = KeyPair::generate().expect("generate server key");
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .expect("server params")
        .signed_by(&key, &ca, &ca_key)
        .expect("sign the server certificate");
    let write = |name: &str, pem: String| {
        std::fs::write(dir.join(name), pem).unwrap_or_else(|e| panic!("write {name}: {e}"))
    };
    write("ca.pem", ca.pem());
    write("server.pem", leaf.pem());
    write("server.key", key.serialize_pem());
}

/// A loopback port nobody listens on right now, which the outage tests can
/// stop and start the server on again. (tests/common/relay.rs takes ports
/// below 26000.)
fn free_port() -> u16 {
    super::port_outside_ephemeral_range(26_000..32_000, |port| {
        TcpListener::bind(("127.0.0.1", port)).ok().map(|_| port)
    })
}

/// A real Redis Sentinel (`redis-server sentinel.conf --sentinel`) monitoring one primary
/// as `mymaster`, quick to act: down after 500 ms, a quorum of one. Dropping it kills it.
pub struct Sentinel {
    /// Its loopback port.
    pub port: u16,
    /// The process.
    child: Child,
    /// Its directory, with the config file it rewrites.
    dir: PathBuf,
}

impl Sentinel {
    /// The name it monitors the primary under.
    pub const MASTER: &'static str = "mymaster";

    /// Starts a sentinel for `primary` and waits until it answers and knows `replicas`
    /// replicas of it.
    pub fn start(primary: &RedisServer, replicas: usize) -> Sentinel {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("wtp-sentinel-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the sentinel's directory");
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {m} 127.0.0.1 {p} 1\n\
                 sentinel down-after-milliseconds {m} 500\n\
                 sentinel failover-timeout {m} 5000\n\
                 sentinel parallel-syncs {m} 1\n",
                dir = dir.display(),
                m = Sentinel::MASTER,
                p = primary.port,
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server --sentinel");
        let sentinel = Sentinel { port, child, dir };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let known = sentinel
                .query(redis::cmd("SENTINEL").arg("replicas").arg(Sentinel::MASTER))
                .map(|r: Vec<redis::Value>| r.len());
            if known.is_ok_and(|n| n >= replicas) {
                return sentinel;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinel on port {port} did not come up knowing {replicas} replicas"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port of the server it names as the primary now.
    pub fn primary_port(&self) -> Option<u16> {
        let addr: Option<(String, String)> = self
            .query(
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(Sentinel::MASTER),
            )
            .ok()?;
        addr.and_then(|(_, port)| port.parse().ok())
    }

    fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?;
        let mut conn = client.get_connection_with_timeout(Duration::from_millis(500))?;
        cmd.query(&mut conn)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port where nothing listens, for an unreachable sentinel in a URL.
pub fn dead_port() -> u16 {
    free_port()
}
