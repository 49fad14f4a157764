//! Loopback ports for the servers a test starts.

use std::time::Duration;

/// A port nothing listens on right now (the OS picks it; the listener is closed again).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts TCP connections on loopback `port`; panics after 30 s.
pub async fn wait_tcp(port: u16, what: &str) {
    crate::wait::eventually(what, Duration::from_secs(30), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
}
