//! The command line's HTTP client for imports into a running head office (`instore-sync
//! purchases import`): reads the file as a stream, sends it in chunks, maps each refused line
//! back to its line in the file, and shows progress on a terminal.
//!
//! In: an NDJSON or CSV purchase file (CSV when the name ends in `.csv` or the first line is not
//! a JSON object). Out: one [`PurchaseReport`] for the whole file. Memory stays bounded by one
//! chunk whatever the file's size.

use std::{
    io::{BufRead, BufReader, IsTerminal, Read, Write},
    path::Path,
};

use anyhow::Context;

use crate::ingest::purchases::{CsvPurchases, PurchaseReport};

/// Purchases per request.
const CHUNK: usize = 10_000;

/// One chunk ready to send: the NDJSON body and, per body line, its line in the file.
#[derive(Default)]
struct Chunk {
    body: String,
    lines: Vec<usize>,
}

impl Chunk {
    fn push(&mut self, file_line: usize, json: &str) {
        self.body.push_str(json);
        self.body.push('\n');
        self.lines.push(file_line);
    }
}

fn is_csv(path: &Path, first_line: Option<&str>) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        || first_line.is_some_and(|l| !l.trim_start().starts_with('{'))
}

async fn send(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    chunk: Chunk,
    total: &mut PurchaseReport,
) -> anyhow::Result<()> {
    if chunk.lines.is_empty() {
        return Ok(());
    }
    let resp = http
        .post(url)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
        .body(chunk.body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await.context("reading the response")?;
    if !status.is_success() {
        anyhow::bail!("POST {url}: HTTP {status}: {text}");
    }
    let mut report: PurchaseReport =
        serde_json::from_str(&text).with_context(|| format!("unexpected answer: {text}"))?;
    for s in &mut report.skipped {
        s.line = chunk
            .lines
            .get(s.line.wrapping_sub(1))
            .copied()
            .unwrap_or(s.line);
    }
    total.merge(report, 0);
    Ok(())
}

fn progress(on: bool, lines: usize, r: &PurchaseReport) {
    if on {
        eprint!(
            "\r{lines} lines read, {} imported, {} duplicates, {} refused",
            r.imported, r.duplicates, r.skipped_total
        );
        let _ = std::io::stderr().flush();
    }
}

/// Imports the purchase file at `path` into the head office at `base_url`.
pub async fn import_purchases(
    base_url: &str,
    token: &str,
    path: &Path,
) -> anyhow::Result<PurchaseReport> {
    let url = format!("{}/api/purchases", base_url.trim_end_matches('/'));
    let http = reqwest::Client::new();
    let show = std::io::stderr().is_terminal();
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut first = String::new();
    reader
        .read_line(&mut first)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let csv = is_csv(path, Some(&first));
    let rest = std::io::Cursor::new(first.into_bytes()).chain(reader);
    let mut total = PurchaseReport::default();
    let mut chunk = Chunk::default();
    let mut lines_read = 0usize;
    if csv {
        for (line, record) in CsvPurchases::new(rest) {
            lines_read = lines_read.max(line);
            match record.and_then(|r| serde_json::to_string(&r).map_err(|e| e.to_string())) {
                Ok(json) => chunk.push(line, json.as_str()),
                Err(e) => total.skip(line, e),
            }
            if chunk.lines.len() >= CHUNK {
                send(&http, &url, token, std::mem::take(&mut chunk), &mut total).await?;
                progress(show, lines_read, &total);
            }
        }
    } else {
        for (i, line) in rest.lines().enumerate() {
            let line =
                line.with_context(|| format!("reading line {} of {}", i + 1, path.display()))?;
            lines_read = i + 1;
            if !line.trim().is_empty() {
                chunk.push(i + 1, &line);
            }
            if chunk.lines.len() >= CHUNK {
                send(&http, &url, token, std::mem::take(&mut chunk), &mut total).await?;
                progress(show, lines_read, &total);
            }
        }
    }
    send(&http, &url, token, chunk, &mut total).await?;
    progress(show, lines_read, &total);
    if show {
        eprintln!();
    }
    total.skipped.sort_by_key(|s| s.line);
    Ok(total)
}
