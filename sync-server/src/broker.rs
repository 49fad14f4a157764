//! The embedded MQTT broker (rumqttd) for the single-machine default and tests.
//!
//! In: a listen address. Out: a running broker on its own threads, and the address it is bound
//! to. rumqttd keeps everything in memory and has no topic ACLs: per-store isolation needs an
//! external broker (`[broker] url`). rumqttd offers no way to stop it, so its threads live until
//! the process exits; a second head office in the same process needs another port.

use std::{net::SocketAddr, time::Duration};

use instore_protocol::MAX_PAYLOAD_BYTES;

/// Largest MQTT packet: a full payload plus room for the topic and headers.
pub const MAX_PACKET_BYTES: usize = MAX_PAYLOAD_BYTES + 4 * 1024;

/// How long the broker may take to accept connections after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr} for the embedded MQTT broker (is the port taken?): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("embedded broker configuration: {0}")]
    Config(String),
    #[error("cannot start the embedded broker thread: {0}")]
    Thread(std::io::Error),
    #[error("the embedded broker did not accept connections on {0} within 5 s")]
    NotReady(SocketAddr),
}

/// A running embedded broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// The address the broker listens on (the chosen port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// rumqttd's configuration, written as the TOML its own binary reads: the struct has private
/// fields in places, and its documented file format is the stable way to build it.
fn broker_config(addr: SocketAddr) -> Result<rumqttd::Config, BrokerError> {
    let text = format!(
        r#"
id = 0

[router]
# Thousands of gateways, each one connection, plus head office and tools.
max_connections = 20000
max_outgoing_packet_count = 200
# In-memory commit log per filter: 4 x 32 MiB at most.
max_segment_size = 33554432
max_segment_count = 4

[v4.1]
name = "instore-hq"
listen = "{addr}"
next_connection_delay_ms = 0

[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = {MAX_PACKET_BYTES}
max_inflight_count = 200
dynamic_filters = true
"#
    );
    toml::from_str(&text).map_err(|e| BrokerError::Config(e.to_string()))
}

/// Starts rumqttd on `addr` and waits until it accepts connections.
///
/// The port is bound once here first so that a taken port fails with a clear error (rumqttd
/// itself only logs it from its thread); with port 0 that probe also picks the port.
pub async fn start(addr: SocketAddr) -> Result<EmbeddedBroker, BrokerError> {
    let probe =
        std::net::TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?;
    let addr = probe
        .local_addr()
        .map_err(|source| BrokerError::Bind { addr, source })?;
    drop(probe);
    let config = broker_config(addr)?;
    let thread = std::thread::Builder::new()
        .name("instore-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;

    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if mqtt_handshake(addr).await.is_ok() {
            tracing::info!(%addr, "embedded MQTT broker listening");
            return Ok(EmbeddedBroker { addr });
        }
        if thread.is_finished() {
            // Its server thread could not bind (someone took the port after the probe).
            return Err(BrokerError::Bind {
                addr,
                source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
            });
        }
        if tokio::time::Instant::now() > deadline {
            return Err(BrokerError::NotReady(addr));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects, sends an MQTT 3.1.1 CONNECT, waits for CONNACK and disconnects: proof the broker
/// serves MQTT, without the "connection closed" error a bare TCP probe makes rumqttd log.
async fn mqtt_handshake(addr: SocketAddr) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CLIENT_ID: &[u8] = b"instore-sync-probe";
    let mut packet = vec![0x10, (10 + 2 + CLIENT_ID.len()) as u8];
    // Protocol name "MQTT", level 4, flags: clean session, keep-alive 10 s.
    packet.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10]);
    packet.extend_from_slice(&[0, CLIENT_ID.len() as u8]);
    packet.extend_from_slice(CLIENT_ID);
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(&packet).await?;
    let mut connack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut connack))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    if connack[0] != 0x20 || connack[3] != 0 {
        return Err(std::io::Error::other("unexpected CONNACK"));
    }
    // DISCONNECT, so the broker drops the session quietly.
    stream.write_all(&[0xE0, 0]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_config_allows_a_full_payload() {
        let c = broker_config("127.0.0.1:1883".parse().unwrap()).unwrap();
        let v4 = c.v4.unwrap();
        let server = v4.values().next().unwrap();
        assert!(server.connections.max_payload_size >= MAX_PAYLOAD_BYTES + 4096);
        assert!(c.router.max_connections >= 10_000);
    }

    #[tokio::test]
    async fn a_taken_port_fails_with_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = start(taken.local_addr().unwrap()).await.unwrap_err();
        assert!(err.to_string().contains("is the port taken"), "{err}");
    }
}
