//! An embedded MQTT broker (rumqttd) for tests that need a real one in-process, and a client
//! subscribed to it.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

use crate::net::free_port;

/// Starts rumqttd on a free loopback port accepting payloads up to `max_payload` bytes; it
/// lives until the test process exits.
pub fn start_broker(max_payload: usize) -> u16 {
    let port = free_port();
    let config = format!(
        r#"
        id = 0
        [router]
        max_connections = 100
        max_outgoing_packet_count = 200
        max_segment_size = 104857600
        max_segment_count = 10
        [v4.1]
        name = "v4-1"
        listen = "127.0.0.1:{port}"
        next_connection_delay_ms = 1
        [v4.1.connections]
        connection_timeout_ms = 60000
        max_payload_size = {max_payload}
        max_inflight_count = 100
        dynamic_filters = true
        "#
    );
    let config: rumqttd::Config = toml::from_str(&config).unwrap();
    std::thread::spawn(move || {
        rumqttd::Broker::new(config).start().unwrap();
    });
    port
}

/// A client `client_id` subscribed to `topic` (QoS 1) on the broker at `port`, returned once the
/// broker has confirmed the subscription; poll the event loop for what it receives.
pub async fn subscribed(port: u16, client_id: &str, topic: &str) -> (AsyncClient, EventLoop) {
    let (sub, mut sub_loop) = AsyncClient::new(MqttOptions::new(client_id, "127.0.0.1", port), 10);
    sub.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), sub_loop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => panic!("no SubAck"),
        }
    }
    (sub, sub_loop)
}
