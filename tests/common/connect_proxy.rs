//! A small HTTP CONNECT forward proxy on loopback, standing in for the
//! fixed-IP egress proxy users put in front of WeChat's IP whitelist. It
//! records every tunnel it opens, checks `Proxy-Authorization` when told to,
//! and can refuse tunnels.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// What the proxy has seen, shared with its tasks.
#[derive(Default)]
struct Seen {
    /// `host:port` of every CONNECT request, refused ones included.
    targets: Vec<String>,
    /// The `Proxy-Authorization` value of every CONNECT request, if any.
    auths: Vec<Option<String>>,
    /// Tunnels opened (answered 200).
    opened: usize,
}

/// A running CONNECT proxy; dropping it stops it and cuts every tunnel.
pub struct ConnectProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    refuse: Arc<AtomicBool>,
    tasks: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    /// Starts a proxy that requires `Proxy-Authorization: <required_auth>`
    /// when given (407 otherwise).
    pub async fn start(required_auth: Option<&str>) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the CONNECT proxy");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let refuse = Arc::new(AtomicBool::new(false));
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let required = required_auth.map(str::to_owned);
        let accept = {
            let (seen, refuse, tasks) = (seen.clone(), refuse.clone(), tasks.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (seen, refuse, required) = (seen.clone(), refuse.clone(), required.clone());
                    tasks
                        .lock()
                        .unwrap()
                        .spawn(async move { tunnel(client, seen, refuse, required).await });
                }
            })
        };
        ConnectProxy {
            addr,
            seen,
            refuse,
            tasks,
            accept,
        }
    }

    /// `http://127.0.0.1:PORT`, for the proxy's config.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on every CONNECT gets 403; every open tunnel is cut, and
    /// closed by the time this returns.
    pub async fn refuse_all(&self) {
        self.refuse.store(true, Ordering::SeqCst);
        let mut open = std::mem::take(&mut *self.tasks.lock().unwrap());
        open.abort_all();
        while open.join_next().await.is_some() {}
    }

    /// Tunnels opened so far.
    pub fn tunnels(&self) -> usize {
        self.seen.lock().unwrap().opened
    }

    /// The target of every CONNECT so far.
    pub fn targets(&self) -> Vec<String> {
        self.seen.lock().unwrap().targets.clone()
    }

    /// The `Proxy-Authorization` of every CONNECT so far.
    pub fn auths(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap().auths.clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.tasks.lock().unwrap().abort_all();
    }
}

async fn tunnel(
    client: TcpStream,
    seen: Arc<Mutex<Seen>>,
    refuse: Arc<AtomicBool>,
    required: Option<String>,
) {
    let mut client = BufReader::new(client);
    let mut line = String::new();
    if client.read_line(&mut line).await.unwrap_or(0) == 0 {
        return;
    }
    let target = match line.split_whitespace().collect::<Vec<_>>()[..] {
        ["CONNECT", target, _] => target.to_owned(),
        _ => {
            let _ = client
                .get_mut()
                .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                .await;
            return;
        }
    };
    let mut auth = None;
    loop {
        let mut header = String::new();
        if client.read_line(&mut header).await.unwrap_or(0) == 0 {
            return;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("proxy-authorization") {
                auth = Some(value.trim().to_owned());
            }
        }
    }
    {
        let mut seen = seen.lock().unwrap();
        seen.targets.push(target.clone());
        seen.auths.push(auth.clone());
    }
    let answer: &[u8] = if refuse.load(Ordering::SeqCst) {
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
    } else if required.is_some() && auth != required {
        b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"
    } else {
        b""
    };
    if !answer.is_empty() {
        let _ = client.get_mut().write_all(answer).await;
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(&target).await else {
        let _ = client
            .get_mut()
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
            .await;
        return;
    };
    if client
        .get_mut()
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    seen.lock().unwrap().opened += 1;
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
