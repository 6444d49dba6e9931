//! A TCP proxy for connection-loss tests: client -> proxy -> broker on loopback. Cutting the
//! proxy drops every connection through it (and refuses new ones until restored), which is a
//! broker restart as the client sees it, without disturbing other tests that share the broker.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// See the module docs.
pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: AbortHandle,
}

struct State {
    open: AtomicBool,
    connections: Mutex<Vec<AbortHandle>>,
    accepted: AtomicU64,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> io::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            open: AtomicBool::new(true),
            connections: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
        });
        let s = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !s.open.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection refused/reset
                }
                s.accepted.fetch_add(1, Ordering::SeqCst);
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                s.connections
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(task.abort_handle());
            }
        })
        .abort_handle();
        Ok(TcpProxy {
            addr,
            state,
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections the proxy has accepted while open.
    pub fn connections_accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Drops every connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.state.open.store(false, Ordering::SeqCst);
        for c in self
            .state
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            c.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.state.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
