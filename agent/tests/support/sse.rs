//! Server-Sent Events off a streaming response, as a clerk tablet reads the alert stream.

use std::time::Duration;

use futures::StreamExt;

/// Longest wait for the next bytes of a stream.
const WAIT: Duration = Duration::from_secs(30);

/// One parsed Server-Sent Event.
#[derive(Debug, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Reads events off a streaming response, skipping comment-only blocks (keep-alives, retry).
pub struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buf: String,
}

impl SseReader {
    pub fn new(resp: reqwest::Response) -> Self {
        Self {
            // Chunks as plain bytes, so the test needs no direct `bytes` dependency.
            body: resp.bytes_stream().map(|c| c.map(|b| b.to_vec())).boxed(),
            buf: String::new(),
        }
    }

    /// The next event with data, or `None` when the stream ends.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent::default();
                let mut has_data = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        ev.event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        has_data = true;
                        ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if has_data {
                    return Some(ev);
                }
            }
            let chunk = tokio::time::timeout(WAIT, self.body.next())
                .await
                .expect("no SSE bytes in time")?
                .ok()?;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    pub async fn next_alert(&mut self) -> (u64, serde_json::Value) {
        let ev = self.next().await.expect("stream ended early");
        assert_eq!(ev.event.as_deref(), Some("alert"));
        let id = ev.id.expect("event without id");
        let seq = id
            .rsplit_once('-')
            .expect("id is epoch-seq")
            .1
            .parse()
            .unwrap();
        (seq, serde_json::from_str(&ev.data).unwrap())
    }
}
