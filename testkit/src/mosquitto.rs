//! Debian's Mosquitto on a free port with a config file of its own, killed when dropped.
//! Default limits (1,000 queued messages per offline client) and no persistence, as packaged: a
//! restart forgets every session, which is what the agent and head office must survive.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{net::free_port, net::wait_tcp, process::Proc};

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

pub struct Mosquitto {
    proc: Option<Proc>,
    pub port: u16,
    conf: PathBuf,
    log: PathBuf,
    /// The folder of [`Mosquitto::temp`], removed with the broker.
    _dir: Option<tempfile::TempDir>,
}

impl Mosquitto {
    /// Anonymous clients on loopback, its config and log in `dir`.
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(dir, "").await
    }

    /// [`Mosquitto::start`] with `extra` appended to the config (more listeners, TLS, limits).
    /// Listeners added there are not waited for: the test knows which ones it needs.
    pub async fn start_with(dir: &Path, extra: &str) -> Self {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        // `user root`: started as root, mosquitto would switch to its own user, who cannot read
        // a test's private temp dir (ignored when not started as root).
        std::fs::write(
            &conf,
            format!(
                "allow_anonymous true\npersistence false\nuser root\n\
                 listener {port} 127.0.0.1\n{extra}"
            ),
        )
        .unwrap();
        let mut m = Mosquitto {
            proc: None,
            port,
            conf,
            log: dir.join("mosquitto.log"),
            _dir: None,
        };
        m.start_again().await;
        m
    }

    /// [`Mosquitto::start_with`] in a temporary folder of its own.
    pub async fn temp(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Self::start_with(dir.path(), extra).await;
        m._dir = Some(dir);
        m
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: the broker vanishes with every session and queued message.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal("KILL");
            p.wait_exit(Duration::from_secs(5))
                .expect("mosquitto killed");
        }
    }

    /// Starts the broker again on the same port.
    pub async fn start_again(&mut self) {
        assert!(
            Path::new(MOSQUITTO).exists(),
            "Debian's mosquitto must be installed at {MOSQUITTO}"
        );
        self.proc = Some(Proc::spawn(
            Path::new(MOSQUITTO),
            &["-c", self.conf.to_str().unwrap()],
            self.log.clone(),
        ));
        wait_tcp(self.port, "mosquitto to listen").await;
    }
}
