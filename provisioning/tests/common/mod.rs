//! What the provisioning tests that run the built tool share.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, process::Output};

/// Runs the built `instore-provision` with `args` in `dir`, off the runtime: head office serves
/// on it while the tool waits for its answers.
pub async fn provision(dir: &Path, args: &[&str]) -> Output {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_instore-provision"))
            .args(&args)
            .current_dir(dir)
            .output()
            .expect("instore-provision runs")
    })
    .await
    .unwrap()
}

/// Output bytes as trimmed text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_owned()
}
