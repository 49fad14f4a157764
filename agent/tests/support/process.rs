//! The real `instore-agent` binary as a child process: one-shot CLI commands, `run` killed on
//! drop, and a clean SIGTERM stop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output},
};

pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_instore-agent")
}

/// Runs `instore-agent <args> --config <cfg>` with `RUST_LOG=rust_log` (unset: the binary's
/// default) and asserts it succeeded.
pub fn cli_output(cfg: &Path, args: &[&str], rust_log: Option<&str>) -> Output {
    let mut cmd = Command::new(agent_bin());
    cmd.args(args).arg("--config").arg(cfg);
    if let Some(level) = rust_log {
        cmd.env("RUST_LOG", level);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    out
}

/// Runs a CLI command (as [`cli_output`]) and returns its stdout.
pub fn cli(cfg: &Path, args: &[&str]) -> String {
    String::from_utf8(cli_output(cfg, args, None).stdout).unwrap()
}

/// Writes `dir/agent.toml`: store `store-1`, gateway `gw-1`, data under `dir/data`, loopback
/// HTTP on `port` with admin token `token`, then `rest` (the test's own sections).
pub fn write_agent_config(dir: &Path, port: u16, token: &str, rest: &str) -> PathBuf {
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"store_id = "store-1"
gateway_id = "gw-1"
data_dir = "data"

[http]
listen = "127.0.0.1:{port}"
admin_token = "{token}"

{rest}"#
        ),
    )
    .unwrap();
    cfg
}

/// `members import <file>`; the import report is on stdout.
pub fn import_members(cfg: &Path, file: &Path) -> Output {
    cli_output(cfg, &["members", "import", file.to_str().unwrap()], None)
}

/// Writes the sim source's first `population` members as NDJSON to `dir/members.ndjson`.
pub fn write_sim_members(dir: &Path, population: u32) -> PathBuf {
    let path = dir.join("members.ndjson");
    std::fs::write(&path, sim_members_ndjson(population)).unwrap();
    path
}

/// The sim source's first `population` members, one JSON record a line.
pub fn sim_members_ndjson(population: u32) -> String {
    instore_agent::sources::sim::population(population)
        .iter()
        .map(|m| serde_json::to_string(m).unwrap() + "\n")
        .collect()
}

/// `instore-agent run --config <cfg>` with `RUST_LOG=rust_log`; the caller sets stdio.
pub fn run_command(cfg: &Path, rust_log: &str) -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--config"])
        .arg(cfg)
        .env("RUST_LOG", rust_log);
    cmd
}

/// A running agent, killed if the test fails before stopping it.
pub struct AgentProcess(pub Child);

impl AgentProcess {
    pub fn spawn(mut cmd: Command) -> AgentProcess {
        AgentProcess(cmd.spawn().unwrap())
    }

    /// SIGTERM, then wait for the exit, which must be clean.
    pub fn stop(mut self) {
        let pid = self.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = self.0.wait().unwrap();
        assert!(status.success(), "agent exited with {status:?}");
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
