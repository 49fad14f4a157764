//! NDJSON request bodies read as a stream: lines come out in batches as the bytes arrive, so an
//! import of any size holds one batch in memory, never the file. Both imports (members and
//! purchases) read their bodies through this, after the token has been checked.

use axum::{
    body::{Body, BodyDataStream},
    http::StatusCode,
};
use futures::StreamExt;

use super::ApiError;
use crate::ingest::members::RawLine;

/// Longest line accepted (a member with many identifiers, a purchase with hundreds of items).
pub const MAX_LINE_BYTES: usize = 256 * 1024;

/// A request body, as numbered lines.
pub(super) struct NdjsonBody {
    stream: BodyDataStream,
    pending: Vec<u8>,
    line_no: usize,
    /// The line being read is already over [`MAX_LINE_BYTES`]: its bytes are dropped as they
    /// come and it is refused when it ends.
    overlong: bool,
    done: bool,
}

impl NdjsonBody {
    pub(super) fn new(body: Body) -> Self {
        Self {
            stream: body.into_data_stream(),
            pending: Vec::new(),
            line_no: 0,
            overlong: false,
            done: false,
        }
    }

    /// Lines read so far.
    pub(super) fn lines_read(&self) -> usize {
        self.line_no
    }

    /// The next `max` lines (fewer only at the end of the body; none once it is over).
    pub(super) async fn next_batch(&mut self, max: usize) -> Result<Vec<RawLine>, ApiError> {
        let mut out = Vec::with_capacity(max.min(4096));
        loop {
            self.take_lines(&mut out, max);
            if out.len() >= max {
                return Ok(out);
            }
            if self.done {
                if !self.pending.is_empty() || self.overlong {
                    // The last line, without a newline.
                    self.line_no += 1;
                    let pending = std::mem::take(&mut self.pending);
                    out.push((self.line_no, decode(&pending, self.overlong)));
                    self.overlong = false;
                }
                return Ok(out);
            }
            match self.stream.next().await {
                Some(Ok(chunk)) => self.pending.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("body unreadable after line {}: {e}", self.line_no),
                    ));
                }
                None => self.done = true,
            }
        }
    }

    /// Moves complete lines from `pending` to `out`, up to `max` in `out`.
    fn take_lines(&mut self, out: &mut Vec<RawLine>, max: usize) {
        let mut start = 0;
        while out.len() < max {
            let Some(pos) = self.pending[start..].iter().position(|&b| b == b'\n') else {
                break;
            };
            let end = start + pos;
            self.line_no += 1;
            out.push((
                self.line_no,
                decode(&self.pending[start..end], self.overlong),
            ));
            self.overlong = false;
            start = end + 1;
        }
        self.pending.drain(..start);
        if self.pending.len() > MAX_LINE_BYTES && !self.pending.contains(&b'\n') {
            self.overlong = true;
            self.pending.clear();
        }
    }
}

fn decode(bytes: &[u8], overlong: bool) -> Result<String, String> {
    if overlong {
        return Err(format!("line longer than {MAX_LINE_BYTES} bytes"));
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.trim_end_matches('\r').to_owned()),
        Err(e) => Err(format!("not UTF-8 (byte {})", e.valid_up_to())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `chunks` as a streaming body, each one arriving separately.
    fn body(chunks: Vec<Vec<u8>>) -> Body {
        let stream =
            futures::stream::iter(chunks.into_iter().map(Ok::<_, std::convert::Infallible>));
        Body::from_stream(stream)
    }

    async fn all(mut b: NdjsonBody, max: usize) -> Vec<Vec<RawLine>> {
        let mut batches = Vec::new();
        loop {
            let batch = b.next_batch(max).await.unwrap();
            if batch.is_empty() {
                return batches;
            }
            batches.push(batch);
        }
    }

    #[tokio::test]
    async fn lines_split_across_chunks_come_out_whole_and_numbered() {
        let chunks = vec![
            b"{\"a\":".to_vec(),
            b"1}\r\n{\"b\"".to_vec(),
            b":2}\n\n{\"c\":3}".to_vec(),
        ];
        let batches = all(NdjsonBody::new(body(chunks)), 2).await;
        let flat: Vec<RawLine> = batches.concat();
        assert_eq!(batches[0].len(), 2);
        assert_eq!(
            flat,
            vec![
                (1, Ok("{\"a\":1}".into())),
                (2, Ok("{\"b\":2}".into())),
                (3, Ok(String::new())),
                (4, Ok("{\"c\":3}".into())),
            ]
        );
    }

    #[tokio::test]
    async fn an_overlong_line_and_bad_utf8_are_refused_and_the_rest_read() {
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        let chunks = vec![
            b"ok1\n".to_vec(),
            long[..MAX_LINE_BYTES / 2].to_vec(),
            long[MAX_LINE_BYTES / 2..].to_vec(),
            b"tail of the long line\n\xff\xfe\nok4".to_vec(),
        ];
        let flat = all(NdjsonBody::new(body(chunks)), 100).await.concat();
        assert_eq!(flat.len(), 4);
        assert_eq!(flat[0], (1, Ok("ok1".into())));
        assert!(flat[1].1.as_ref().unwrap_err().contains("longer than"));
        assert_eq!(flat[1].0, 2);
        assert!(flat[2].1.as_ref().unwrap_err().contains("UTF-8"));
        assert_eq!(flat[3], (4, Ok("ok4".into())));
    }
}
