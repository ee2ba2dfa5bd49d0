//! Runs the real `wechat-token-proxy` binary as a child process: writes its config, captures
//! its log, finds its ports in the log, and cleans up even when a test panics.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The binary under test, built by cargo for integration tests.
const BINARY: &str = env!("CARGO_BIN_EXE_wechat-token-proxy");

/// How long the proxy may take to log both listening lines.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a one-shot run (`check`, `--help`) may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines captured from one of the child's pipes, shared with the thread reading it.
type Lines = Arc<Mutex<Vec<String>>>;

/// A running proxy. Dropping it kills the process and removes its config file.
pub struct Proxy {
    /// Where the proxy serves applications.
    pub addr: SocketAddr,
    /// Where the admin endpoints listen.
    pub admin: SocketAddr,
    /// `http://127.0.0.1:PORT` of the proxy listener.
    pub url: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    pub admin_url: String,
    /// The config file the proxy was started with; tests rewrite it before a `HUP`.
    /// Empty for a run without one (`demo`).
    pub config_path: PathBuf,
    /// The process.
    child: Child,
    /// Every stderr line (the log) so far.
    stderr: Lines,
    /// Every stdout line so far.
    stdout: Lines,
    /// The pipe readers, joined once the process has exited so the log is complete.
    readers: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Starts the proxy with `RUST_LOG=info`; see [`Proxy::start_with_log`].
    pub fn start(config_toml: &str, env: &[(&str, &str)]) -> Proxy {
        Proxy::start_with_log(config_toml, env, "info")
    }

    /// Writes `config_toml` to a temp file, runs `wechat-token-proxy --config <file>` with
    /// `env` added to the environment, and waits until the log names both listeners'
    /// addresses. Panics with the captured log if that takes over 10 s or the process exits.
    pub fn start_with_log(config_toml: &str, env: &[(&str, &str)], rust_log: &str) -> Proxy {
        let config_path = write_temp("proxy.toml", config_toml);
        let config = config_path.to_str().expect("a UTF-8 temp path").to_owned();
        let mut proxy = Proxy::spawn(&["--config", &config], env, rust_log);
        proxy.config_path = config_path;
        proxy
    }

    /// Runs `wechat-token-proxy ARGS` (a subcommand such as `demo`, or
    /// `--config FILE`) with `env` added, and waits until the log names both
    /// listeners' addresses, as [`Proxy::start_with_log`].
    pub fn spawn(args: &[&str], env: &[(&str, &str)], rust_log: &str) -> Proxy {
        let config_path = PathBuf::new();
        let mut command = Command::new(BINARY);
        command
            .args(args)
            .env("RUST_LOG", rust_log)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BINARY}: {e}"));
        let pid = child.id();
        let stderr = Lines::default();
        let stdout = Lines::default();
        let readers = vec![
            read_lines(
                child.stderr.take(),
                stderr.clone(),
                format!("proxy {pid} err"),
            ),
            read_lines(
                child.stdout.take(),
                stdout.clone(),
                format!("proxy {pid} out"),
            ),
        ];

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let (addr, admin) = loop {
            let lines = snapshot(&stderr);
            if let (Some(proxy), Some(admin)) = (
                listening_addr(&lines, "proxy"),
                listening_addr(&lines, "admin"),
            ) {
                break (proxy, admin);
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(50)); // let the readers drain the pipes
                panic!(
                    "the proxy exited during startup ({status});\n{}",
                    transcript(&stderr, &stdout)
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the proxy did not log both listening lines within {STARTUP_TIMEOUT:?};\n{}",
                    transcript(&stderr, &stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };

        Proxy {
            addr,
            admin,
            url: format!("http://{addr}"),
            admin_url: format!("http://{admin}"),
            config_path,
            child,
            stderr,
            stdout,
            readers,
        }
    }

    /// All log (stderr) lines so far.
    pub fn logs(&self) -> Vec<String> {
        snapshot(&self.stderr)
    }

    /// All stdout lines so far (the log contract says nothing goes there).
    pub fn stdout(&self) -> Vec<String> {
        snapshot(&self.stdout)
    }

    /// Whether some log line so far contains `needle`.
    pub fn has_log(&self, needle: &str) -> bool {
        self.logs().iter().any(|line| line.contains(needle))
    }

    /// Waits up to 5 s for a log line containing `needle` and returns it;
    /// panics naming it otherwise. Lines reach the test through a pipe from
    /// another process, so one written just before an answer may be read
    /// just after it.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let found = || self.logs().into_iter().find(|line| line.contains(needle));
        super::wait_until(
            &format!("a log line with {needle:?}"),
            Duration::from_secs(5),
            || found().is_some(),
        )
        .await;
        found().expect("just seen")
    }

    /// The process id, for signals and `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far (`VmHWM` in `/proc/<pid>/status`), in KiB.
    pub fn rss_peak_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM line in {path}"))
    }

    /// Resident memory now (`VmRSS` in `/proc/<pid>/status`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS line in {path}"))
    }

    /// Open file descriptors now (entries of `/proc/<pid>/fd`).
    pub fn open_fds(&self) -> usize {
        let path = format!("/proc/{}/fd", self.pid());
        std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("read {path}: {e}"))
            .count()
    }

    /// Sends a signal by name (`"TERM"`, `"HUP"`, …) with `kill -s`.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {sig} {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit; then the log is complete.
    /// `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("query the proxy's status") {
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.config_path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.config_path);
        }
    }
}

/// Runs the binary to completion with `args` and `env` added; returns its exit status,
/// stdout and stderr. Panics if it runs longer than a minute.
pub fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut child = Command::new(BINARY)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {BINARY}: {e}"));
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("query the binary's status") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    match status {
        Some(status) => (status, stdout, stderr),
        None => panic!(
            "{BINARY} {args:?} ran over {RUN_TIMEOUT:?};\nstdout:\n{stdout}\nstderr:\n{stderr}"
        ),
    }
}

/// Writes `contents` to a new file under the temp dir whose name ends with `name_hint`
/// (so `"app.toml"` keeps its extension) and returns its path.
pub fn write_temp(name_hint: &str, contents: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path =
        std::env::temp_dir().join(format!("wtp-test-{}-{n}-{name_hint}", std::process::id()));
    write_file(&path, contents);
    path
}

/// Writes a file or panics naming it.
fn write_file(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Reads a pipe line by line into `sink`, echoing each line to the test's stderr (shown
/// when the test fails) with `prefix`.
fn read_lines(
    pipe: Option<impl Read + Send + 'static>,
    sink: Lines,
    prefix: String,
) -> JoinHandle<()> {
    let pipe = pipe.expect("the pipe was requested");
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&raw)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    eprintln!("[{prefix}] {line}");
                    sink.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line);
                }
            }
        }
    })
}

/// Reads a whole pipe on a thread (so a chatty child cannot block on a full pipe).
fn read_all(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    let mut pipe = pipe.expect("the pipe was requested");
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A copy of the lines so far.
fn snapshot(lines: &Lines) -> Vec<String> {
    lines.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Both pipes' lines, for panic messages.
fn transcript(stderr: &Lines, stdout: &Lines) -> String {
    format!(
        "stderr:\n{}\nstdout:\n{}",
        snapshot(stderr).join("\n"),
        snapshot(stdout).join("\n")
    )
}

/// The `addr=` of the first log line saying `listening` with `listener=<which>`. Field
/// values may be quoted; colour codes are ignored in case the log is coloured by mistake.
pub fn listening_addr(lines: &[String], which: &str) -> Option<SocketAddr> {
    lines.iter().find_map(|line| {
        let line = strip_ansi(line);
        if !line.contains("listening") {
            return None;
        }
        // `[log] format = "json"` lines.
        if let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(&line) {
            if fields.get("listener")?.as_str()? != which {
                return None;
            }
            return fields.get("addr")?.as_str()?.parse().ok();
        }
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(key))
                .map(|value| value.trim_matches('"'))
        };
        if field("listener=")? != which {
            return None;
        }
        field("addr=")?.parse().ok()
    })
}

/// `line` without ANSI escape sequences (`ESC [ … letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip to the sequence's final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
