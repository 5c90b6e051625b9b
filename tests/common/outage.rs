//! A loopback TCP forwarder that a test can cut and restore: a real network outage between a
//! client and a real server (the shared Milvus), without stopping the server others use.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Outage {
    pub address: SocketAddr,
    up: Arc<watch::Sender<bool>>,
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
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !*accepting.borrow() {
                    drop(client); // down: the connection is reset at once
                    continue;
                }
                let mut state = accepting.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else { return };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = state.wait_for(|up| !*up) => {} // cut: both sides are dropped
                    }
                });
            }
        });
        Self { address, up, task }
    }

    pub fn uri(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Cuts open connections and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.task.abort();
    }
}
