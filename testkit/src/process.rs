//! Real binaries as child processes: found in the workspace's target folder, their stderr kept
//! in a log file for post-mortems, signalled like an init system would, killed when dropped.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// A workspace binary built beside the running test (nextest and `cargo test --workspace` build
/// them all). For the crate's own binary, `env!("CARGO_BIN_EXE_<name>")` is the surer way.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run the workspace's tests",
        path.display()
    );
    path
}

/// A child process killed (SIGKILL) when dropped; its stderr goes to `log`.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// `bin args` with `RUST_LOG` from `INSTORE_TEST_RUST_LOG` (more detail in the kept logs
    /// when chasing a failure), `info,rumqttd=off` otherwise; stdout discarded.
    pub fn spawn(bin: &Path, args: &[&str], log: PathBuf) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(bin)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("INSTORE_TEST_RUST_LOG")
                    .unwrap_or_else(|_| "info,rumqttd=off".into()),
            )
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        Self { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `kill -<sig>`: TERM, KILL, STOP, CONT, HUP...
    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    /// Waits for exit; None if still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kill -<sig> <pid>`, which must succeed.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}
