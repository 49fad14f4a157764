//! `instore-bench ble`: the end-to-end ceiling of the BLE path on a BlueZ stand-in, and the
//! agent's CPU share at given advert rates.
//!
//! A private `dbus-daemon` (type system) runs in a temp dir. This process is the stand-in: it
//! owns `org.bluez`, answers the calls btleplug makes (GetManagedObjects, Properties.GetAll/Get/
//! Set, SetDiscoveryFilter, StartDiscovery, StopDiscovery) and emits `InterfacesAdded` for
//! `--devices` devices, then `PropertiesChanged` (RSSI + ManufacturerData, as BlueZ sends for one
//! advert) round-robin over them at each rate. The agent is this same executable re-run as a
//! child (`ble-agent`) with `DBUS_SYSTEM_BUS_ADDRESS` set — the variable is read once per process,
//! and a child gives a clean `/proc/<pid>/stat` for its CPU share. `--btleplug` also runs a child
//! that consumes btleplug's own event stream (one `RssiUpdate` per advert, each of which costs
//! btleplug a `GetAll` round trip, plus `properties()` for a new device's first advert), for the
//! comparison in ARCHITECTURE.md.
//!
//! A rate "keeps up" when the consumer counted at least 98 % of the adverts sent within a 2 s
//! grace after sending stopped and dropped none; the ceiling is the highest rate that kept up.

use std::{
    collections::HashMap,
    io::{BufRead, Read, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use dbus::{
    Message,
    arg::{PropMap, RefArg, Variant},
    blocking::Connection,
    channel::{Channel, MatchingReceiver, Sender},
    message::MatchRule,
};

#[derive(Debug, clap::Args)]
pub struct BleArgs {
    /// Advert rates to try, per second.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "500,2000,5000,10000,20000,40000"
    )]
    pub rates: Vec<u64>,
    /// Seconds each rate is sustained.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Distinct devices the adverts come from.
    #[arg(long, default_value_t = 500)]
    pub devices: u32,
    /// Also measure btleplug's own event path.
    #[arg(long)]
    pub btleplug: bool,
}

const ADAPTER: &str = "/org/bluez/hci0";
const DEVICE1: &str = "org.bluez.Device1";
const ADAPTER1: &str = "org.bluez.Adapter1";

fn v<T: RefArg + 'static>(x: T) -> Variant<Box<dyn RefArg>> {
    Variant(Box::new(x))
}

fn adapter_props() -> PropMap {
    let mut p = PropMap::new();
    p.insert("Address".into(), v("00:01:02:03:04:05".to_string()));
    p.insert("AddressType".into(), v("public".to_string()));
    p.insert("Name".into(), v("bench".to_string()));
    p.insert("Alias".into(), v("bench".to_string()));
    p.insert("Modalias".into(), v("usb:v1D6Bp0246d0540".to_string()));
    p.insert("Powered".into(), v(true));
    p.insert("Discovering".into(), v(true));
    p
}

fn device_path(i: u32) -> String {
    let b = i.to_be_bytes();
    format!(
        "{ADAPTER}/dev_C0_00_{:02X}_{:02X}_{:02X}_{:02X}",
        b[0], b[1], b[2], b[3]
    )
}

fn mfr(i: u32, n: u64) -> HashMap<u16, Variant<Box<dyn RefArg>>> {
    // An Apple "nearby" payload that changes every advert, as real phones' do.
    let mut d = vec![0x10u8, 0x05];
    d.extend_from_slice(&i.to_be_bytes());
    d.push(n as u8);
    let mut m = HashMap::new();
    m.insert(0x004c, v(d));
    m
}

fn device_props(i: u32, n: u64) -> PropMap {
    let b = i.to_be_bytes();
    let mut p = PropMap::new();
    p.insert(
        "Address".into(),
        v(format!(
            "C0:00:{:02X}:{:02X}:{:02X}:{:02X}",
            b[0], b[1], b[2], b[3]
        )),
    );
    p.insert("AddressType".into(), v("random".to_string()));
    p.insert("Adapter".into(), v(dbus::Path::from(ADAPTER)));
    p.insert("RSSI".into(), v(-60i16 - (n % 20) as i16));
    p.insert("ManufacturerData".into(), v(mfr(i, n)));
    for k in [
        "Paired",
        "Connected",
        "ServicesResolved",
        "Trusted",
        "Blocked",
        "LegacyPairing",
    ] {
        p.insert(k.into(), v(false));
    }
    p.insert("UUIDs".into(), v(Vec::<String>::new()));
    p
}

/// The BlueZ stand-in: this process's connection owning `org.bluez`.
struct StandIn {
    conn: Connection,
    devices: u32,
    sent: u64,
    /// Set when a client called StartDiscovery: the consumer is listening.
    scanning: Arc<std::sync::atomic::AtomicBool>,
}

impl StandIn {
    fn start(address: &str, devices: u32) -> anyhow::Result<StandIn> {
        let mut ch = Channel::open_private(address).context("connecting the stand-in")?;
        ch.register()?;
        let conn = Connection::from(ch);
        conn.request_name("org.bluez", false, true, false)?;
        let scanning = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = scanning.clone();
        conn.start_receive(
            MatchRule::new_method_call(),
            Box::new(move |msg, conn| {
                if msg.member().is_some_and(|m| &*m == "StartDiscovery") {
                    s.store(true, Ordering::SeqCst);
                }
                let reply = answer(&msg, devices);
                let _ = conn.send(reply);
                true
            }),
        );
        Ok(StandIn {
            conn,
            devices,
            sent: 0,
            scanning,
        })
    }

    fn pump(&self, for_: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + for_;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            self.conn.process(left.min(Duration::from_millis(5)))?;
            if left.is_zero() {
                return Ok(());
            }
        }
    }

    /// Announces every device (their first adverts).
    fn add_devices(&mut self) -> anyhow::Result<()> {
        for i in 0..self.devices {
            let mut ifaces: HashMap<String, PropMap> = HashMap::new();
            ifaces.insert(DEVICE1.into(), device_props(i, 0));
            let msg =
                Message::new_signal("/", "org.freedesktop.DBus.ObjectManager", "InterfacesAdded")
                    .map_err(anyhow::Error::msg)?
                    .append2(dbus::Path::from(device_path(i)), ifaces);
            self.send(msg)?;
        }
        Ok(())
    }

    fn send(&mut self, msg: Message) -> anyhow::Result<()> {
        self.conn
            .channel()
            .send(msg)
            .map_err(|()| anyhow::anyhow!("stand-in send failed"))?;
        self.sent += 1;
        Ok(())
    }

    /// One advert of device `i`: RSSI and manufacturer data in one PropertiesChanged.
    fn advert(&mut self, n: u64) -> anyhow::Result<()> {
        let i = (n % u64::from(self.devices)) as u32;
        let mut p = PropMap::new();
        p.insert("RSSI".into(), v(-60i16 - (n % 20) as i16));
        p.insert("ManufacturerData".into(), v(mfr(i, n)));
        let msg = Message::new_signal(
            device_path(i),
            "org.freedesktop.DBus.Properties",
            "PropertiesChanged",
        )
        .map_err(anyhow::Error::msg)?
        .append3(DEVICE1, p, Vec::<String>::new());
        self.send(msg)
    }

    /// Sends `rate` adverts/s for `secs`, paced in 10 ms slices. Returns (sent, wall seconds).
    fn emit(&mut self, rate: u64, secs: u64) -> anyhow::Result<(u64, f64)> {
        let start = Instant::now();
        let total = rate * secs;
        let mut n = 0u64;
        while n < total {
            let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
            while n < due {
                self.advert(n)?;
                n += 1;
            }
            self.conn.channel().flush();
            self.conn.process(Duration::from_millis(1))?;
        }
        Ok((n, start.elapsed().as_secs_f64()))
    }
}

fn answer(msg: &Message, devices: u32) -> Message {
    let (iface, member) = (
        msg.interface().map(|s| s.to_string()).unwrap_or_default(),
        msg.member().map(|s| s.to_string()).unwrap_or_default(),
    );
    let path = msg.path().map(|p| p.to_string()).unwrap_or_default();
    match (iface.as_str(), member.as_str()) {
        ("org.freedesktop.DBus.ObjectManager", "GetManagedObjects") => {
            let mut tree: HashMap<dbus::Path<'static>, HashMap<String, PropMap>> = HashMap::new();
            let mut a = HashMap::new();
            a.insert(ADAPTER1.to_string(), adapter_props());
            tree.insert(dbus::Path::from(ADAPTER), a);
            msg.method_return().append1(tree)
        }
        ("org.freedesktop.DBus.Properties", "GetAll") => {
            let props = if path == ADAPTER {
                adapter_props()
            } else {
                let i = (0..devices).find(|i| device_path(*i) == path).unwrap_or(0);
                device_props(i, 0)
            };
            msg.method_return().append1(props)
        }
        ("org.freedesktop.DBus.Properties", "Get") => {
            let name: String = msg
                .read2::<String, String>()
                .map(|(_, n)| n)
                .unwrap_or_default();
            let props = adapter_props();
            match props.get(&name) {
                Some(val) => msg.method_return().append1(Variant(val.0.box_clone())),
                None => msg.error(
                    &"org.freedesktop.DBus.Error.InvalidArgs".into(),
                    c"no such property",
                ),
            }
        }
        ("org.freedesktop.DBus.Properties", "Set")
        | (ADAPTER1, "SetDiscoveryFilter" | "StartDiscovery" | "StopDiscovery") => {
            msg.method_return()
        }
        _ => msg.error(
            &"org.freedesktop.DBus.Error.UnknownMethod".into(),
            c"not in the stand-in",
        ),
    }
}

/// A private system bus in `dir`.
fn start_bus(dir: &Path) -> anyhow::Result<(Child, String)> {
    let socket = dir.join("bus");
    let conf = dir.join("bus.conf");
    std::fs::write(
        &conf,
        format!(
            r#"<busconfig><type>system</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/>
<allow send_type="method_call"/><allow send_type="signal"/><allow send_type="method_return"/><allow send_type="error"/>
<allow receive_type="method_call"/><allow receive_type="signal"/><allow receive_type="method_return"/><allow receive_type="error"/>
</policy><limit name="max_incoming_bytes">1000000000</limit><limit name="max_outgoing_bytes">1000000000</limit>
<limit name="max_message_size">1000000</limit></busconfig>"#,
            socket.display()
        ),
    )?;
    let child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", conf.display()))
        .arg("--nofork")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting dbus-daemon (apt-get install dbus)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!("dbus-daemon did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, format!("unix:path={}", socket.display())))
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn metric(port: u16, name: &str) -> f64 {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return f64::NAN;
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may contain spaces) — utime and stime are the 12th
    // and 13th after it.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    num(11) + num(12)
}

/// Resident memory of a process, MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn clock_ticks_per_s() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A consumer process and how to read its advert count.
trait Consumer {
    fn pid(&self) -> u32;
    fn count(&self) -> f64;
    fn dropped(&self) -> f64;
}

struct AgentChild {
    child: Killed,
    port: u16,
}

impl Consumer for AgentChild {
    fn pid(&self) -> u32 {
        self.child.0.id()
    }
    fn count(&self) -> f64 {
        metric(self.port, "instore_agent_adverts_total")
    }
    fn dropped(&self) -> f64 {
        metric(self.port, "instore_agent_ble_signals_overflow_total")
            + metric(self.port, "instore_agent_adverts_dropped_total")
    }
}

struct BtleplugChild {
    child: Killed,
    count: Arc<AtomicU64>,
}

impl Consumer for BtleplugChild {
    fn pid(&self) -> u32 {
        self.child.0.id()
    }
    fn count(&self) -> f64 {
        self.count.load(Ordering::Relaxed) as f64
    }
    fn dropped(&self) -> f64 {
        0.0
    }
}

fn spawn_agent(dir: &Path, bus: &str) -> anyhow::Result<AgentChild> {
    let port = free_port()?;
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "store_id = \"bench\"\ngateway_id = \"g1\"\ndata_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
             [[sources]]\nkind = \"ble\"\nadapter = \"hci0\"\nwatchdog_s = 600\n"
        ),
    )?;
    let child = Command::new(std::env::current_exe()?)
        .args(["ble-agent", "--config"])
        .arg(&cfg)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
        .env("RUST_LOG", "warn")
        .spawn()?;
    Ok(AgentChild {
        child: Killed(child),
        port,
    })
}

fn spawn_btleplug(bus: &str) -> anyhow::Result<BtleplugChild> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("ble-btleplug")
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
        .stdout(Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().context("child stdout")?;
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(n) = line.trim().parse() {
                c.store(n, Ordering::Relaxed);
            }
        }
    });
    Ok(BtleplugChild {
        child: Killed(child),
        count,
    })
}

/// Runs the rate ladder against one consumer; returns the ceiling (adverts/s).
fn ladder(
    name: &str,
    stand_in: &mut StandIn,
    consumer: &dyn Consumer,
    args: &BleArgs,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stand_in.scanning.load(Ordering::SeqCst) {
        if Instant::now() > deadline {
            bail!("{name}: consumer did not start scanning");
        }
        stand_in.pump(Duration::from_millis(50))?;
    }
    // Let the consumer finish starting (its HTTP server comes up after the sources).
    stand_in.pump(Duration::from_secs(1))?;
    stand_in.add_devices()?;
    stand_in.pump(Duration::from_secs(2))?;
    let hz = clock_ticks_per_s();
    let mut ceiling = 0;
    let mut rows = Vec::new();
    println!(
        "{name}: rate/s  sent/s  counted  lag-at-end  dropped  cpu%(of one core, while sending)  rss MiB"
    );
    for &rate in &args.rates {
        let (c0, d0, t0) = (
            consumer.count(),
            consumer.dropped(),
            cpu_ticks(consumer.pid()),
        );
        let (sent, secs) = stand_in.emit(rate, args.seconds)?;
        let cpu = (cpu_ticks(consumer.pid()) - t0) as f64 / hz / secs * 100.0;
        let lag_at_end = sent as f64 - (consumer.count() - c0);
        stand_in.pump(Duration::from_secs(2))?;
        let counted = consumer.count() - c0;
        let dropped = consumer.dropped() - d0;
        let achieved = sent as f64 / secs;
        let kept_up = counted >= 0.98 * sent as f64 && dropped == 0.0;
        let limited = achieved < 0.95 * rate as f64;
        println!(
            "{name}: {rate:>7} {achieved:>7.0} {counted:>8.0} {lag_at_end:>7.0} {dropped:>8.0} {cpu:>6.1} {:>6.1}{}",
            rss_mib(consumer.pid()),
            if !kept_up {
                "  <- fell behind"
            } else if limited {
                "  (the stand-in could not send faster)"
            } else {
                ""
            }
        );
        rows.push(
            serde_json::json!({"rate": rate, "sent_per_s": achieved.round(),
            "counted": counted, "dropped": dropped, "cpu_pct": (cpu * 10.0).round() / 10.0,
            "rss_mib": (rss_mib(consumer.pid()) * 10.0).round() / 10.0, "kept_up": kept_up}),
        );
        if !kept_up {
            break;
        }
        ceiling = achieved as u64;
        if limited {
            break;
        }
    }
    println!("{name}: kept up with {ceiling} adverts/s (highest rate sent and counted)");
    Ok(serde_json::json!({"ceiling_per_s": ceiling, "rates": rows}))
}

pub fn run(args: BleArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (daemon, bus) = start_bus(dir.path())?;
    let _daemon = Killed(daemon);
    let mut stand_in = StandIn::start(&bus, args.devices.max(1))?;
    println!(
        "ble: stand-in with {} devices, {} s per rate, on {} cores",
        args.devices,
        args.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // The agent's process is killed at the end of this block, before btleplug's starts.
    let agent = {
        let child = spawn_agent(dir.path(), &bus)?;
        ladder("agent (BlueZ signals)", &mut stand_in, &child, &args)?
    };
    let mut btleplug = serde_json::Value::Null;
    if args.btleplug {
        stand_in.scanning.store(false, Ordering::SeqCst);
        let b = spawn_btleplug(&bus)?;
        btleplug = ladder("btleplug events", &mut stand_in, &b, &args)?;
    }
    println!(
        "{}",
        serde_json::json!({"bench": "ble", "devices": args.devices, "seconds": args.seconds,
            "agent": agent, "btleplug": btleplug})
    );
    Ok(())
}

/// Child mode: the agent's runtime on the bus named by `DBUS_SYSTEM_BUS_ADDRESS`, until killed.
pub fn agent_child(config: &Path) -> anyhow::Result<()> {
    let cfg = instore_agent::config::AgentConfig::load(config)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let _agent = instore_agent::runtime::start(cfg).await?;
            std::future::pending::<()>().await;
            Ok(())
        })
}

/// Child mode: btleplug's own event path, reading `properties()` for every update as a consumer
/// that wants RSSI and data must; prints its count every 100 ms.
pub fn btleplug_child() -> anyhow::Result<()> {
    use btleplug::api::{Central, CentralEvent, Manager as _, Peripheral as _, ScanFilter};
    use futures::StreamExt;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let manager = btleplug::platform::Manager::new().await?;
            let adapter = manager
                .adapters()
                .await?
                .into_iter()
                .next()
                .context("no adapter")?;
            let mut events = adapter.events().await?;
            adapter.start_scan(ScanFilter::default()).await?;
            let count = Arc::new(AtomicU64::new(0));
            let c = count.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    println!("{}", c.load(Ordering::Relaxed));
                }
            });
            let mut failed = false;
            while let Some(ev) = events.next().await {
                let id = match ev {
                    // Each already cost btleplug a GetAll round trip; RSSI is in the event.
                    CentralEvent::RssiUpdate { .. } => {
                        count.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    // The first advert: its RSSI and data only through properties().
                    CentralEvent::DeviceDiscovered(id) => id,
                    // ManufacturerDataAdvertisement repeats the advert RssiUpdate counted.
                    _ => continue,
                };
                let props = match adapter.peripheral(&id).await {
                    Ok(p) => p.properties().await,
                    Err(e) => Err(e),
                };
                match props {
                    Ok(Some(_)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        if !failed {
                            eprintln!("btleplug child: properties() gave {other:?}");
                            failed = true;
                        }
                    }
                }
            }
            Ok(())
        })
}
