//! A BlueZ stand-in on a private system bus for the BLE integration tests: `dbus-daemon` with a
//! config in a temp dir, Debian's `python3-dbusmock` (template `bluez5`) owning `org.bluez`, and
//! the real `instore-agent` binary started with `DBUS_SYSTEM_BUS_ADDRESS` pointing at that bus.
//! Everything is a real process, killed on drop.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use dbus::{
    arg::{RefArg, Variant},
    blocking::Connection,
};

use super::{
    http::metric_value,
    process::{self, AgentProcess},
};

pub const PYTHON: &str = "/usr/bin/python3";

/// Whether the stand-in can run here; prints why not.
pub fn available() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import dbusmock"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("dbus-daemon")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIPPED: python3-dbusmock or dbus-daemon is not installed (scripts/setup installs them)"
        );
    }
    ok
}

pub struct Bus {
    pub dir: tempfile::TempDir,
    pub address: String,
    daemon: Child,
    mock: Option<Child>,
}

impl Drop for Bus {
    fn drop(&mut self) {
        if let Some(m) = &mut self.mock {
            let _ = m.kill();
            let _ = m.wait();
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

impl Bus {
    /// A private bus of type "system" with an allow-all policy.
    pub fn start() -> Bus {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("system_bus_socket");
        let conf = dir.path().join("bus.conf");
        std::fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .unwrap();
        let daemon = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "dbus-daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Bus {
            dir,
            address: format!("unix:path={}", socket.display()),
            daemon,
            mock: None,
        }
    }

    pub fn connect(&self) -> Connection {
        let mut ch = dbus::channel::Channel::open_private(&self.address).unwrap();
        ch.register().unwrap();
        Connection::from(ch)
    }

    /// Starts python-dbusmock's bluez5 template and waits until it owns `org.bluez`.
    pub fn start_bluez(&mut self) {
        self.stop_bluez();
        let child = Command::new(PYTHON)
            .args(["-m", "dbusmock", "--system", "--template", "bluez5"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.mock = Some(child);
        let conn = self.connect();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let p = conn.with_proxy(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                Duration::from_secs(2),
            );
            let (has,): (bool,) = p
                .method_call("org.freedesktop.DBus", "NameHasOwner", ("org.bluez",))
                .unwrap();
            if has {
                break;
            }
            assert!(Instant::now() < deadline, "dbusmock did not take org.bluez");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the stand-in, as if bluetoothd died.
    pub fn stop_bluez(&mut self) {
        if let Some(mut m) = self.mock.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

/// Drives the stand-in through its `org.bluez.Mock` interface and `Properties.Set`.
pub struct Bluez {
    conn: Connection,
}

const T: Duration = Duration::from_secs(5);

impl Bluez {
    pub fn new(bus: &Bus) -> Bluez {
        Bluez {
            conn: bus.connect(),
        }
    }

    pub fn add_adapter(&self, name: &str) {
        let p = self.conn.with_proxy("org.bluez", "/", T);
        let _: (String,) = p
            .method_call("org.bluez.Mock", "AddAdapter", (name, "store"))
            .unwrap();
    }

    pub fn remove_adapter(&self, name: &str) {
        let p = self.conn.with_proxy("org.bluez", "/", T);
        let _: () = p
            .method_call("org.bluez.Mock", "RemoveAdapterWithDevices", (name,))
            .unwrap();
    }

    /// Adds a device and returns its object path.
    pub fn add_device(&self, adapter: &str, address: &str) -> String {
        let p = self.conn.with_proxy("org.bluez", "/", T);
        let (path,): (String,) = p
            .method_call("org.bluez.Mock", "AddDevice", (adapter, address, "phone"))
            .unwrap();
        path
    }

    /// Whether someone is discovering on the adapter (the agent started its scan).
    pub fn discovering(&self, adapter: &str) -> bool {
        use dbus::blocking::stdintf::org_freedesktop_dbus::Properties;
        let p = self
            .conn
            .with_proxy("org.bluez", format!("/org/bluez/{adapter}"), T);
        p.get::<bool>("org.bluez.Adapter1", "Discovering")
            .unwrap_or(false)
    }

    fn set(&self, path: &str, name: &str, value: Variant<Box<dyn RefArg>>) {
        let p = self.conn.with_proxy("org.bluez", path, T);
        let _: () = p
            .method_call(
                "org.freedesktop.DBus.Properties",
                "Set",
                ("org.bluez.Device1", name, value),
            )
            .unwrap();
    }

    pub fn set_address_type(&self, path: &str, t: &str) {
        self.set(path, "AddressType", Variant(Box::new(t.to_string())));
    }

    /// Gives a device added by the stand-in well-typed, empty advertising data. dbusmock's
    /// `AddDevice` declares `ManufacturerData` and `ServiceData` as arrays of dicts, which
    /// bleak (Theengs Gateway's BLE library) cannot read; BlueZ sends dicts.
    pub fn fix_advertising_types(&self, path: &str) {
        let service: HashMap<String, Variant<Box<dyn RefArg>>> = HashMap::new();
        self.set(path, "ServiceData", Variant(Box::new(service)));
        let maker: HashMap<u16, Variant<Box<dyn RefArg>>> = HashMap::new();
        self.set(path, "ManufacturerData", Variant(Box::new(maker)));
    }

    /// One "advert": manufacturer data then RSSI, each emitting PropertiesChanged.
    pub fn advertise(&self, path: &str, company: u16, data: &[u8], rssi: i16) {
        let mut m: HashMap<u16, Variant<Box<dyn RefArg>>> = HashMap::new();
        m.insert(company, Variant(Box::new(data.to_vec())));
        self.set(path, "ManufacturerData", Variant(Box::new(m)));
        self.set(path, "RSSI", Variant(Box::new(rssi)));
    }
}

/// The real agent binary on the private bus.
pub struct Agent {
    pub process: AgentProcess,
    pub base: String,
    pub token: String,
    pub dir: PathBuf,
}

/// Writes a config with one BLE source on `adapter` (plus `extra` TOML) into `dir`.
pub fn write_config(dir: &Path, adapter: &str, port: u16, extra_source: &str) -> PathBuf {
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"store_id = "s1"
gateway_id = "g1"
data_dir = "data"

[http]
listen = "127.0.0.1:{port}"
admin_token = "t0ken"

[[sources]]
kind = "ble"
adapter = "{adapter}"
zone = "entrance"
{extra_source}

[presence]
arrive_sightings = 1
depart_after_s = 3
"#
        ),
    )
    .unwrap();
    cfg
}

pub fn import_members(cfg: &Path, ndjson: &str) {
    let file = cfg.parent().unwrap().join("members.ndjson");
    std::fs::write(&file, ndjson).unwrap();
    process::import_members(cfg, &file);
}

impl Agent {
    /// Starts `instore-agent run` and waits for its HTTP port.
    pub fn start(bus: &Bus, cfg: &Path, port: u16) -> Agent {
        Agent::start_on(Some(&bus.address), cfg, port)
    }

    /// Starts the agent with `DBUS_SYSTEM_BUS_ADDRESS` set to `bus` (None: no bus at all).
    pub fn start_on(bus: Option<&str>, cfg: &Path, port: u16) -> Agent {
        let mut cmd = process::run_command(cfg, "info");
        cmd.stdout(Stdio::null());
        match bus {
            Some(a) => cmd.env("DBUS_SYSTEM_BUS_ADDRESS", a),
            None => cmd.env_remove("DBUS_SYSTEM_BUS_ADDRESS"),
        };
        let agent = Agent {
            process: AgentProcess::spawn(cmd),
            base: format!("http://127.0.0.1:{port}"),
            token: "t0ken".into(),
            dir: cfg.parent().unwrap().to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "agent did not open its port");
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    /// A GET with the admin token over plain HTTP/1.0; the body ("" on any failure).
    pub fn get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let port = self
            .base
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap();
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let req = format!(
            "GET {path} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            self.token
        );
        if s.write_all(req.as_bytes()).is_err() {
            return String::new();
        }
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        if !resp.starts_with("HTTP/1.0 200") && !resp.starts_with("HTTP/1.1 200") {
            return String::new();
        }
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }

    /// A metric's value from `/metrics` (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        metric_value(&self.get("/metrics"), name).unwrap_or(0.0)
    }
}
