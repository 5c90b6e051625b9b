//! A loopback TCP forwarder that a test can cut and restore: a real network outage between a
//! client and a real server (the shared Milvus), without stopping the server others use. It can
//! also turn into a black hole: connections stay open and bytes are taken, but nothing comes
//! back (a server that hangs, or a firewall that drops packets), which no reset announces.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Outage {
    pub address: SocketAddr,
    up: Arc<watch::Sender<bool>>,
    /// Bytes clients have sent through, so a test can cut in the middle of a write by what
    /// has been sent rather than by the clock.
    sent: Arc<std::sync::atomic::AtomicU64>,
    /// While set, bytes in both directions are read and thrown away.
    hole: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Outage {
    /// Forwards a fresh loopback port to `upstream` ("host:port").
    pub async fn forward_to(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let address = listener.local_addr().expect("local address");
        let (up, _) = watch::channel(true);
        let up = Arc::new(up);
        let accepting = up.clone();
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = sent.clone();
        let hole = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swallowing = hole.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !*accepting.borrow() {
                    drop(client); // down: the connection is reset at once
                    continue;
                }
                let mut state = accepting.subscribe();
                let upstream = upstream.clone();
                let counted = counted.clone();
                let swallowing = swallowing.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else { return };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let upward = pipe(&mut client_read, &mut server_write, &swallowing, Some(&counted));
                    let downward = pipe(&mut server_read, &mut client_write, &swallowing, None);
                    tokio::select! {
                        _ = async { tokio::join!(upward, downward) } => {}
                        _ = state.wait_for(|up| !*up) => {} // cut: both sides are dropped
                    }
                });
            }
        });
        Self { address, up, sent, hole, task }
    }

    pub fn uri(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Bytes clients have sent through so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Cuts open connections and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.hole.store(false, std::sync::atomic::Ordering::Relaxed);
        self.up.send_replace(true);
    }

    /// Keeps every connection open and accepts new ones, but nothing reaches either side.
    pub fn black_hole(&self) {
        self.hole.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Copies `from` to `to` until either side closes, throwing bytes away while `swallowing` is
/// set, and counting what it passes on in `counted`.
async fn pipe(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    swallowing: &std::sync::atomic::AtomicBool,
    counted: Option<&std::sync::atomic::AtomicU64>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) if swallowing.load(std::sync::atomic::Ordering::Relaxed) => {}
            Ok(n) => {
                if let Some(counted) = counted {
                    counted.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.task.abort();
    }
}
