//! The embedded MQTT broker (rumqttd) for the single-machine default and tests.
//!
//! In: a listen address and who may log in ([`login::Logins`]; `None` only with `[broker]
//! allow_anonymous`). Out: a running broker on its own threads, and the address it is bound to.
//! rumqttd keeps everything in memory and has no topic ACLs: a logged-in gateway could read
//! other stores' topics, so per-store isolation of reads needs an external broker with the ACLs
//! of `instore-provision mosquitto`; forged writes are refused by the message seals on any
//! broker. A login is checked at CONNECT only: a gateway revoked while connected keeps its
//! connection until it drops, although head office refuses its messages at once. rumqttd offers
//! no way to stop it, so its threads live until the process exits; a second head office in the
//! same process needs another port.

pub mod login;

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

/// Head office's own login on its embedded broker.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: String,
    pub password: String,
}

/// Starts rumqttd on `addr` and waits until it accepts connections; with `logins`, only those
/// it accepts may connect (`identity` is head office's, used for the readiness probe).
///
/// The port is bound once here first so that a taken port fails with a clear error (rumqttd
/// itself only logs it from its thread); with port 0 that probe also picks the port.
pub async fn start(
    addr: SocketAddr,
    logins: Option<login::Logins>,
    identity: &Identity,
) -> Result<EmbeddedBroker, BrokerError> {
    let probe =
        std::net::TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?;
    let addr = probe
        .local_addr()
        .map_err(|source| BrokerError::Bind { addr, source })?;
    drop(probe);
    let mut config = broker_config(addr)?;
    if let Some(logins) = logins {
        let server = config
            .v4
            .as_mut()
            .and_then(|servers| servers.values_mut().next())
            .ok_or_else(|| BrokerError::Config("no v4 server".into()))?;
        server.set_auth_handler(move |client_id: String, user: String, password: String| {
            std::future::ready(logins.check(&client_id, &user, &password, crate::now_ms()))
        });
    }
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
        if mqtt_handshake(addr, identity).await.is_ok() {
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

/// An MQTT 3.1.1 CONNECT with clean session, keep-alive 10 s, and head office's login.
fn connect_packet(client_id: &str, identity: &Identity) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02 | 0x80 | 0x40, 0, 10];
    for field in [client_id, &identity.user, &identity.password] {
        let bytes = &field.as_bytes()[..field.len().min(u16::MAX as usize)];
        body.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        body.extend_from_slice(bytes);
    }
    let mut packet = vec![0x10];
    // Remaining length: 7 bits per byte, high bit set on all but the last.
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        packet.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

/// Connects, sends an MQTT 3.1.1 CONNECT, waits for CONNACK and disconnects: proof the broker
/// serves MQTT, without the "connection closed" error a bare TCP probe makes rumqttd log.
async fn mqtt_handshake(addr: SocketAddr, identity: &Identity) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let packet = connect_packet("instore-sync-probe", identity);
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

    #[test]
    fn the_probe_connect_encodes_a_long_login() {
        let id = Identity {
            user: "u".repeat(100),
            password: "p".repeat(100),
        };
        let p = connect_packet("c", &id);
        // 10 header bytes + 3 length-prefixed fields (3 + 102 + 102) = 217: two length bytes.
        assert_eq!(&p[..3], &[0x10, (217 % 128) | 0x80, 1]);
        assert_eq!(p.len(), 3 + 217);
    }

    #[tokio::test]
    async fn a_taken_port_fails_with_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let id = Identity {
            user: "hq".into(),
            password: "pw".into(),
        };
        let err = start(taken.local_addr().unwrap(), None, &id)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("is the port taken"), "{err}");
    }
}
