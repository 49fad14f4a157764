//! QR scanners: one code per line, from a device or FIFO (`path`) or from scanners in TCP-client
//! mode connecting to `listen`.
//!
//! Out: [`Control::QrScan`] to the engine (bounded control channel; a connection waits for room,
//! so a burst of scans slows that scanner, never the engine). Lines are bounded
//! ([`MAX_LINE`]: longer ones are dropped and counted, as are lines that are not UTF-8), and so
//! are concurrent TCP scanners ([`MAX_CONNECTIONS`]: more are closed at once). Payloads are never
//! logged: a member's code is a credential.
//!
//! A `path` must yield text lines: a scanner in USB-serial (CDC-ACM) mode (`/dev/ttyACM0`, port
//! settings left to `stty`/udev), a hidraw node of a scanner that emits text, or a FIFO fed by
//! another program. At end of file (a FIFO's writer left) or on a read error the path is opened
//! again after a pause, so an unplugged scanner comes back by itself; a plain file is read once.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt},
    net::TcpListener,
    sync::{Semaphore, mpsc},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::{SourceConfig, SourceKind},
    engine::{Clock, Control},
    metrics::Metrics,
};

/// Longest accepted line: signed member codes are well under 1 KiB.
pub const MAX_LINE: usize = 2048;
/// Scanners connected over TCP at once, per listener.
pub const MAX_CONNECTIONS: usize = 16;
const REOPEN_AFTER: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum QrSourceError {
    #[error("qr source: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Splits a byte stream into bounded text lines (`\n`, optional `\r`; blank lines skipped).
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    /// Inside an over-long line: discard up to the next newline.
    skipping: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Code(String),
    /// Too long or not UTF-8.
    Dropped,
}

impl LineSplitter {
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Line>) {
        while !bytes.is_empty() {
            let nl = bytes.iter().position(|b| *b == b'\n');
            let (chunk, rest, ended) = match nl {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if !self.skipping {
                if self.buf.len() + chunk.len() > MAX_LINE {
                    self.buf.clear();
                    self.skipping = true;
                    out.push(Line::Dropped);
                } else {
                    self.buf.extend_from_slice(chunk);
                }
            }
            if ended {
                if !self.skipping {
                    let line = std::mem::take(&mut self.buf);
                    match String::from_utf8(line) {
                        Ok(s) if s.trim().is_empty() => {}
                        Ok(s) => out.push(Line::Code(s.trim().to_string())),
                        Err(_) => out.push(Line::Dropped),
                    }
                }
                self.skipping = false;
            }
        }
    }
}

/// Starts a task for every `kind = "qr"` source. Binds listeners now, so a taken port fails
/// the start.
pub async fn spawn_all(
    sources: &[SourceConfig],
    clock: Clock,
    control: mpsc::Sender<Control>,
    metrics: &Metrics,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<Vec<SocketAddr>, QrSourceError> {
    let mut bound = Vec::new();
    for cfg in sources.iter().filter(|s| s.kind == SourceKind::Qr) {
        let feed = Feed {
            zone: Arc::from(cfg.zone.as_str()),
            clock: clock.clone(),
            control: control.clone(),
            metrics: metrics.clone(),
        };
        if let Some(addr) = cfg.listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| QrSourceError::Listen { addr, source })?;
            let local = listener.local_addr().unwrap_or(addr);
            tracing::info!(addr = %local, zone = %cfg.zone, "QR scanners may connect");
            bound.push(local);
            tracker.spawn(listen(listener, feed, tracker.clone(), cancel.clone()));
        } else if let Some(path) = &cfg.path {
            tracker.spawn(read_path(path.clone(), feed, cancel.clone()));
        }
    }
    Ok(bound)
}

#[derive(Clone)]
struct Feed {
    zone: Arc<str>,
    clock: Clock,
    control: mpsc::Sender<Control>,
    metrics: Metrics,
}

impl Feed {
    /// Reads lines from `r` until it ends; false when the engine is gone or we are cancelled.
    async fn pump(&self, mut r: impl AsyncRead + Unpin, cancel: &CancellationToken) -> bool {
        let mut split = LineSplitter::default();
        let mut buf = vec![0u8; 1024];
        let mut lines = Vec::new();
        loop {
            let n = tokio::select! {
                _ = cancel.cancelled() => return false,
                n = r.read(&mut buf) => match n {
                    Ok(0) => return true,
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(zone = %self.zone, error = %e, "QR scanner read failed");
                        return true;
                    }
                },
            };
            split.push(&buf[..n], &mut lines);
            for line in lines.drain(..) {
                let payload = match line {
                    Line::Code(p) => p,
                    Line::Dropped => {
                        self.metrics.qr_lines_dropped.inc();
                        tracing::info!(zone = %self.zone, "QR scanner line dropped: too long or not text");
                        continue;
                    }
                };
                self.metrics.qr_scans.inc();
                let scan = Control::QrScan {
                    zone: self.zone.clone(),
                    payload,
                    at_ms: self.clock.now_ms(),
                };
                tokio::select! {
                    _ = cancel.cancelled() => return false,
                    sent = self.control.send(scan) => if sent.is_err() { return false },
                }
            }
        }
    }
}

async fn listen(
    listener: TcpListener,
    feed: Feed,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "QR listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many QR scanners connected; closing the newest");
            continue;
        };
        tracing::debug!(%peer, zone = %feed.zone, "QR scanner connected");
        let (feed, cancel) = (feed.clone(), cancel.clone());
        tracker.spawn(async move {
            feed.pump(stream, &cancel).await;
            drop(permit);
        });
    }
}

async fn read_path(path: PathBuf, feed: Feed, cancel: CancellationToken) {
    loop {
        let opened = tokio::select! {
            _ = cancel.cancelled() => return,
            f = tokio::fs::File::open(&path) => f,
        };
        match opened {
            Ok(file) => {
                if !feed.pump(file, &cancel).await {
                    return;
                }
                // A plain file has no writer to come back: reading it again would scan every
                // code twice.
                if tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file()) {
                    tracing::info!(path = %path.display(), "QR scan file read to the end");
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open QR scanner")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(REOPEN_AFTER) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<Line> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        out
    }

    #[test]
    fn lines_split_across_reads_and_carriage_returns_are_trimmed() {
        assert_eq!(
            split(&[b"ab", b"c\r\n\r\nde", b"f\n"]),
            [Line::Code("abc".into()), Line::Code("def".into())]
        );
    }

    #[test]
    fn an_over_long_line_is_dropped_once_and_the_next_line_survives() {
        let long = vec![b'x'; MAX_LINE + 1];
        assert_eq!(
            split(&[&long, &long, b"\nok\n"]),
            [Line::Dropped, Line::Code("ok".into())]
        );
        let exact = vec![b'y'; MAX_LINE];
        assert_eq!(split(&[&exact, b"\n"]).len(), 1);
        assert_eq!(split(&[b"\xff\xfe\n"]), [Line::Dropped]);
    }
}
