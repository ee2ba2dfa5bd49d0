//! A TCP relay in front of the fake WeChat server whose port can be made to refuse
//! connections, accept none at all, reset every one or go silent, then serve again:
//! upstream connection failures the fake itself cannot stage, since it must keep
//! answering token fetches.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle as TaskHandle;

/// What the relay's port does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Accepts and pipes every connection to the target.
    Forward,
    /// Nothing listens: connections are refused (RST).
    Refuse,
    /// A listener whose backlog is full and which never accepts: connection attempts
    /// get no answer until they time out.
    Blackhole,
    /// Accepts every connection and resets it (RST) at once.
    Reset,
    /// A host that hangs: the connections piped so far stop carrying bytes but stay
    /// open, and new ones are accepted and get nothing. Only from `Forward`.
    Stall,
}

/// A running relay; every mode change but `Stall` first cuts all piped connections.
pub struct Relay {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    /// Mode changes, each acknowledged once in force.
    control: mpsc::UnboundedSender<(Mode, oneshot::Sender<()>)>,
    /// The relay's thread; it ends when `control` is dropped.
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Starts forwarding a free port on 127.0.0.1 to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let (control, mut commands) = mpsc::unbounded_channel::<(Mode, oneshot::Sender<()>)>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build the relay's runtime");
            runtime.block_on(async move {
                let first = listen_below_ephemeral_range();
                let addr = first.local_addr().unwrap();
                let mut state = forward(first, target);
                let _ = ready_tx.send(addr);
                while let Some((mode, done)) = commands.recv().await {
                    state = match (state, mode) {
                        (State::Forward(accept_loop, stall), Mode::Stall) => {
                            let _ = stall.send(true);
                            State::Forward(accept_loop, stall)
                        }
                        (_, Mode::Stall) => panic!("Stall only from Forward"),
                        (state, mode) => {
                            leave(state).await;
                            enter(mode, addr, target).await
                        }
                    };
                    let _ = done.send(());
                }
            });
        });
        let addr = ready_rx.await.expect("the relay starts");
        Relay {
            addr,
            control,
            thread: Some(thread),
        }
    }

    /// Switches to `mode`; returns once it is in force.
    pub async fn set(&self, mode: Mode) {
        let (done_tx, done_rx) = oneshot::channel();
        self.control
            .send((mode, done_tx))
            .expect("the relay is running");
        done_rx.await.expect("the relay switches");
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop; its runtime then drops every task.
        let (control, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.control, control));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What keeps a mode going; [`leave`] ends it and cuts its connections.
enum State {
    /// The accept loop, which owns the listener and the pipes, and the switch that
    /// silences them.
    Forward(TaskHandle<()>, watch::Sender<bool>),
    Refuse,
    /// The loop accepting and resetting connections.
    Reset(TaskHandle<()>),
    /// The listener that never accepts, and the connections that fill its backlog.
    Blackhole(#[allow(dead_code)] tokio::net::TcpListener, Vec<TcpStream>),
}

/// Ends a mode; once this returns its listener is closed, so the port can be bound again.
async fn leave(state: State) {
    if let State::Forward(accept_loop, _) | State::Reset(accept_loop) = state {
        accept_loop.abort();
        let _ = accept_loop.await;
    }
}

async fn enter(mode: Mode, addr: SocketAddr, target: SocketAddr) -> State {
    match mode {
        Mode::Forward => forward(bind(addr, 1024).await, target),
        Mode::Refuse => State::Refuse,
        Mode::Reset => {
            let listener = bind(addr, 1024).await;
            State::Reset(tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    // Linger 0: close() sends RST.
                    let _ = stream.set_zero_linger();
                    drop(stream);
                }
            }))
        }
        Mode::Stall => unreachable!("handled by the caller"),
        Mode::Blackhole => {
            let listener = bind(addr, 0).await;
            let mut fillers = Vec::new();
            // Fill the accept queue until a connection attempt goes unanswered.
            for _ in 0..64 {
                match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr))
                    .await
                {
                    Ok(Ok(stream)) => fillers.push(stream),
                    _ => break,
                }
            }
            State::Blackhole(listener, fillers)
        }
    }
}

/// A listener on `addr` with `backlog`, rebinding a port the relay used before.
/// Relays every connection accepted on `listener` to `target`, until the
/// state's switch silences them.
fn forward(listener: tokio::net::TcpListener, target: SocketAddr) -> State {
    let (stall, stalled) = watch::channel(false);
    State::Forward(
        tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let mut stalled = stalled.clone();
                pipes.spawn(async move {
                    let silent = *stalled.borrow();
                    if silent {
                        // Held open, silent, until the mode changes.
                        return std::future::pending::<()>().await;
                    }
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = async { stalled.wait_for(|s| *s).await.is_ok() } => {
                                // Both sides stay open and carry nothing more.
                                std::future::pending::<()>().await;
                            }
                        }
                    }
                });
            }
        }),
        stall,
    )
}

/// A listener on a loopback port the relay can unbind and bind again as it
/// switches modes. (tests/common/redis.rs takes ports from 26000 up.)
fn listen_below_ephemeral_range() -> tokio::net::TcpListener {
    super::port_outside_ephemeral_range(20_000..26_000, |port| {
        try_bind(([127, 0, 0, 1], port).into(), 1024).ok()
    })
}

fn try_bind(addr: SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Binds the relay's own port again; connections it just cut may hold the
/// port for a moment, so this retries briefly.
async fn bind(addr: SocketAddr, backlog: u32) -> tokio::net::TcpListener {
    let mut tries = 0;
    loop {
        match try_bind(addr, backlog) {
            Ok(listener) => return listener,
            Err(e) if tries >= 100 => panic!("bind {addr}: {e}"),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
