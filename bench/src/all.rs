//! `instore-bench all`: every benchmark in one run, each in a process of its own (a fresh heap for
//! the memory figures, and one failing bench does not stop the others), with the machine, the
//! load average and the time beside each figure. Writes the whole run as JSON (`--out`), a
//! Markdown table to stdout, and with `--markdown BENCHMARKS.md` the generated section of that
//! file, so the figures there are the ones a command printed, not ones copied by hand.
//!
//! Every bench prints one JSON line per result (`{"bench": ..., ...}`) beside its human-readable
//! output; this collects those lines and echoes everything else to stderr.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::Context;
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct AllArgs {
    /// Where the run goes as JSON.
    #[arg(long, default_value = "target/bench/all.json")]
    pub out: PathBuf,
    /// Rewrites the generated section of this Markdown file (BENCHMARKS.md) with the run's table.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Only these steps (`--list` names them).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Every step but these.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// Small sizes everywhere: shows that every step runs, in minutes; the figures mean little.
    #[arg(long)]
    pub quick: bool,
    /// Writes the table (and --markdown) from an earlier run's JSON instead of running.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Lists the steps and their commands.
    #[arg(long)]
    pub list: bool,
}

struct Step {
    name: &'static str,
    what: &'static str,
    full: &'static [&'static str],
    /// Empty: the step is skipped with `--quick` (it builds, or cannot be made small).
    quick: &'static [&'static str],
}

const STEPS: &[Step] = &[
    Step {
        name: "hot-path-1m",
        what: "agent hot path, 1M members: adverts/s, ns/advert, index memory",
        full: &["hot-path"],
        quick: &[
            "hot-path",
            "--members",
            "5000",
            "--adverts",
            "20000",
            "--present",
            "200",
        ],
    },
    Step {
        name: "hot-path-100k",
        what: "agent hot path, 100k members",
        full: &["hot-path", "--members", "100000"],
        quick: &[
            "hot-path",
            "--members",
            "2000",
            "--adverts",
            "10000",
            "--present",
            "100",
        ],
    },
    Step {
        name: "cache",
        what: "member cache at 1M: import, snapshot and delta apply, agent RSS",
        full: &["cache"],
        quick: &["cache", "--members", "5000"],
    },
    Step {
        name: "latency",
        what: "advert into the agent -> alert at an SSE client, p50/p99",
        full: &["latency"],
        quick: &["latency", "--arrivals", "40", "--warmup", "5"],
    },
    Step {
        name: "relay",
        what: "forwarded sightings taken in by the hub: sightings/s, bytes each",
        full: &["relay"],
        quick: &["relay", "--batches", "50"],
    },
    Step {
        name: "latency-relay",
        what: "advert into a receiver gateway -> forwarded to the hub -> alert at an SSE client",
        full: &["latency", "--via-receiver", "--arrivals", "500"],
        quick: &[
            "latency",
            "--via-receiver",
            "--arrivals",
            "40",
            "--warmup",
            "5",
        ],
    },
    Step {
        name: "uplink",
        what: "outbox drain, head-office ingest on SQLite, fsyncs at steady load",
        full: &["uplink"],
        quick: &[
            "uplink",
            "--drain-events",
            "2000",
            "--ingest-events",
            "2000",
            "--steady-s",
            "2",
        ],
    },
    Step {
        name: "scale-out",
        what: "head-office ingest on Mosquitto + PostgreSQL, one and two instances",
        full: &["scale-out"],
        quick: &["scale-out", "--events", "4000", "--gateways", "4"],
    },
    Step {
        name: "data",
        what: "purchase import, recompute, purchase -> store change stream, offline catch-up",
        full: &[
            "data",
            "--members",
            "100000",
            "--purchases",
            "2000000",
            "--pg-members",
            "20000",
        ],
        quick: &[
            "data",
            "--members",
            "2000",
            "--purchases",
            "20000",
            "--pg-members",
            "1000",
            "--import",
            "1000",
            "--latency",
            "5",
            "--offline-members",
            "1000",
            "--offline-days",
            "2",
        ],
    },
    Step {
        name: "ble",
        what: "BLE path on the BlueZ stand-in: the agent's CPU at 500/2,000/5,000 adverts/s",
        full: &["ble", "--rates", "500,2000,5000"],
        quick: &["ble", "--rates", "500", "--seconds", "1", "--devices", "50"],
    },
    Step {
        name: "peers",
        what: "the agent's decoders and TheengsDecoder on one stream, one core",
        full: &["peers"],
        quick: &["peers", "--adverts", "300"],
    },
    Step {
        name: "instructions",
        what: "instructions per advert and per event (callgrind), aarch64 and armv7 (qemu-user)",
        full: &["instructions", "--qemu", "aarch64,armv7"],
        quick: &[
            "instructions",
            "--members",
            "500",
            "--adverts",
            "1000",
            "--events",
            "1000",
        ],
    },
    Step {
        name: "sizes",
        what: "release binaries, stripped, for the host and the gateways",
        full: &["sizes", "--cross", "aarch64,armv7"],
        quick: &[],
    },
];

pub fn run(args: AllArgs) -> anyhow::Result<()> {
    if args.list {
        for s in STEPS {
            println!(
                "{:<14} instore-bench {}\n{:<14} {}",
                s.name,
                s.full.join(" "),
                "",
                s.what
            );
        }
        return Ok(());
    }
    for name in args.only.iter().chain(&args.skip) {
        if !STEPS.iter().any(|s| s.name == name) {
            anyhow::bail!("no step {name:?} (`all --list` names them)");
        }
    }
    let report = match &args.from {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => {
            let report = run_steps(&args)?;
            if let Some(dir) = args.out.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", args.out.display()))?;
            eprintln!("all: the run is in {}", args.out.display());
            report
        }
    };
    let table = markdown(&report);
    print!("{table}");
    if let Some(path) = &args.markdown {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        std::fs::write(path, replace_section(&text, &table))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("all: wrote the generated section of {}", path.display());
    }
    Ok(())
}

fn run_steps(args: &AllArgs) -> anyhow::Result<Value> {
    let exe = std::env::current_exe()?;
    let mut steps = Vec::new();
    for step in STEPS {
        let chosen = (args.only.is_empty() || args.only.iter().any(|n| n == step.name))
            && !args.skip.iter().any(|n| n == step.name);
        if !chosen {
            continue;
        }
        let argv = if args.quick { step.quick } else { step.full };
        if argv.is_empty() {
            eprintln!("all: {}: skipped with --quick", step.name);
            steps.push(json!({"step": step.name, "what": step.what, "skipped": "--quick"}));
            continue;
        }
        eprintln!("all: {}: instore-bench {}", step.name, argv.join(" "));
        steps.push(run_step(&exe, step, argv));
    }
    Ok(json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "quick": args.quick,
        "started": steps.iter().find_map(|s| s.get("started")).cloned().unwrap_or(Value::Null),
        "machine": machine(),
        "steps": steps,
    }))
}

/// One step as a child process: its JSON lines, when and under what load it ran, how it ended.
fn run_step(exe: &Path, step: &Step, argv: &[&str]) -> Value {
    let started = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let load = load_average();
    let t = Instant::now();
    let mut results = Vec::new();
    let outcome = (|| -> anyhow::Result<()> {
        let mut child = Command::new(exe)
            .args(argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the bench")?;
        let stdout = child.stdout.take().context("no stdout")?;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            match result_line(&line) {
                Some(v) => results.push(v),
                None => eprintln!("  {line}"),
            }
        }
        let status = child.wait()?;
        anyhow::ensure!(status.success(), "exited with {status}");
        anyhow::ensure!(!results.is_empty(), "printed no result line");
        Ok(())
    })();
    let mut v = json!({
        "step": step.name,
        "what": step.what,
        "command": format!("instore-bench {}", argv.join(" ")),
        "started": started,
        "load_average": load,
        "load_average_after": load_average(),
        "seconds": t.elapsed().as_secs(),
        "results": results,
    });
    if let Err(e) = outcome {
        eprintln!("all: {}: failed: {e:#}", step.name);
        v["error"] = Value::String(format!("{e:#}"));
    }
    v
}

/// A bench's result line: a JSON object naming its bench.
fn result_line(line: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(line.trim()).ok()?;
    v.get("bench")?.as_str()?;
    Some(v)
}

fn load_average() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|w| w.parse().ok())
        .collect()
}

fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let field = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once([':', '='])?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
            })
            .unwrap_or_default()
    };
    let mem_kib: u64 = field(&read("/proc/meminfo"), "MemTotal")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or(0);
    let output = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let commit = output("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = !output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    json!({
        "arch": std::env::consts::ARCH,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu_model": field(&cpuinfo, "model name"),
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0).round(),
        "os": field(&read("/etc/os-release"), "PRETTY_NAME"),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "rustc": output("rustc", &["--version"]),
        "commit": if dirty { format!("{commit} (with uncommitted changes)") } else { commit },
    })
}

pub const SECTION_START: &str = "<!-- bench-all:start (generated by `cargo run --release -p instore-bench -- all --markdown BENCHMARKS.md`; do not edit by hand) -->";
pub const SECTION_END: &str = "<!-- bench-all:end -->";

/// The run as Markdown: the machine, then one row per step with its figures.
fn markdown(report: &Value) -> String {
    let m = &report["machine"];
    let mut out = format!(
        "Run of `instore-bench all{}` started {} on {} ({} × {}, {} GiB, {}, Linux {}, {}), commit {}.\n\n",
        if report["quick"] == true {
            " --quick"
        } else {
            ""
        },
        text(&report["started"]),
        text(&m["arch"]),
        text(&m["cpus"]),
        text(&m["cpu_model"]),
        text(&m["memory_gib"]),
        text(&m["os"]),
        text(&m["kernel"]),
        text(&m["rustc"]),
        text(&m["commit"]),
    );
    out.push_str("| step | started (UTC) | load 1/5/15 min | took | figures |\n");
    out.push_str("|---|---|---|---|---|\n");
    for s in report["steps"].as_array().into_iter().flatten() {
        let figures = if let Some(why) = s.get("skipped") {
            format!("skipped ({})", text(why))
        } else {
            let mut parts: Vec<String> = s["results"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    let mut flat = Vec::new();
                    flatten("", r, &mut flat);
                    let name = text(&r["bench"]);
                    let body: Vec<String> = flat
                        .into_iter()
                        .filter(|(k, _)| k != "bench")
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect();
                    format!("**{name}** {}", body.join(" · "))
                })
                .collect();
            if let Some(e) = s.get("error") {
                parts.push(format!("**failed**: {}", text(e).replace('|', "/")));
            }
            parts.join("<br>")
        };
        let load: Vec<String> = s["load_average"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            text(&s["command"]).trim_start_matches("instore-bench "),
            text(&s["started"]).get(11..19).unwrap_or(""),
            load.join(" "),
            s["seconds"]
                .as_u64()
                .map_or(String::new(), |t| format!("{t} s")),
            figures,
        ));
    }
    out
}

/// `(dotted.key, formatted value)` for every leaf of `v`.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&key(k), v, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&key(&i.to_string()), v, out);
            }
        }
        Value::Null => {}
        other => out.push((prefix.to_string(), text(other))),
    }
}

/// A value for a reader: integers with thousands separators, fractions to 3 significant digits.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => group(i),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => group(f as i64),
            (None, Some(f)) if f.abs() >= 100.0 => group(f.round() as i64),
            (None, Some(f)) => {
                let s = format!("{f:.3}");
                let s = s.trim_end_matches('0').trim_end_matches('.');
                s.to_string()
            }
            _ => n.to_string(),
        },
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

fn group(i: i64) -> String {
    let digits = i.unsigned_abs().to_string();
    let mut out = String::new();
    for (n, c) in digits.chars().enumerate() {
        if n > 0 && (digits.len() - n).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if i < 0 { format!("-{out}") } else { out }
}

/// `text` with the part between the section markers replaced by `table` (the section appended,
/// under a heading, when the file has none yet).
fn replace_section(text: &str, table: &str) -> String {
    let section = format!("{SECTION_START}\n{table}{SECTION_END}");
    match (text.find(SECTION_START), text.find(SECTION_END)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{section}{}", &text[..a], &text[b + SECTION_END.len()..])
        }
        _ => {
            let sep = if text.is_empty() || text.ends_with("\n\n") {
                ""
            } else if text.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            format!("{text}{sep}## Latest `all` run\n\n{section}\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_as_a_person_writes_them() {
        assert_eq!(text(&json!(1503880)), "1,503,880");
        assert_eq!(text(&json!(-1234)), "-1,234");
        assert_eq!(text(&json!(999)), "999");
        assert_eq!(text(&json!(26732.0)), "26,732");
        assert_eq!(text(&json!(1234.56)), "1,235");
        assert_eq!(text(&json!(1.8912)), "1.891");
        assert_eq!(text(&json!(0.5)), "0.5");
        assert_eq!(text(&json!("sqlite")), "sqlite");
    }

    #[test]
    fn nested_results_flatten_to_dotted_keys() {
        let mut flat = Vec::new();
        flatten(
            "",
            &json!({"bench": "x", "rounds": [{"instances": 1, "rate": 2.5}], "none": null}),
            &mut flat,
        );
        assert_eq!(
            flat,
            vec![
                ("bench".to_string(), "x".to_string()),
                ("rounds.0.instances".to_string(), "1".to_string()),
                ("rounds.0.rate".to_string(), "2.5".to_string()),
            ]
        );
    }

    #[test]
    fn only_result_lines_are_collected() {
        assert!(result_line(r#"{"bench": "hot_path", "adverts_per_s": 5}"#).is_some());
        assert!(result_line(r#"{"adverts_per_s": 5}"#).is_none());
        assert!(result_line("hot path: decode + match").is_none());
        assert!(result_line("{not json").is_none());
    }

    #[test]
    fn the_generated_section_is_replaced_and_the_rest_kept() {
        let doc =
            format!("# B\n\nintro\n\n{SECTION_START}\nold\n{SECTION_END}\n\n## History\nrow\n");
        let new = replace_section(&doc, "| t |\n");
        assert_eq!(
            new,
            format!("# B\n\nintro\n\n{SECTION_START}\n| t |\n{SECTION_END}\n\n## History\nrow\n")
        );
        // Twice gives the same file.
        assert_eq!(replace_section(&new, "| t |\n"), new);
        // A file without the section gets it at the end.
        let added = replace_section("# B\n", "| t |\n");
        assert!(added.starts_with("# B\n\n## Latest `all` run\n\n"));
        assert!(added.ends_with(&format!("{SECTION_START}\n| t |\n{SECTION_END}\n")));
    }

    #[test]
    fn benchmarks_md_has_the_section_a_run_replaces() {
        let doc = include_str!("../../BENCHMARKS.md");
        let (a, b) = (doc.find(SECTION_START), doc.find(SECTION_END));
        assert!(
            a.is_some() && b.is_some() && a < b,
            "BENCHMARKS.md lost its markers"
        );
    }

    #[test]
    fn the_table_names_machine_load_date_and_failures() {
        let report = json!({
            "quick": false, "started": "2026-12-02T21:40:00Z",
            "machine": {"arch": "x86_64", "cpus": 2, "cpu_model": "Xeon", "memory_gib": 24.0,
                "os": "Debian 12", "kernel": "6.1", "rustc": "rustc 1.95", "commit": "abc"},
            "steps": [
                {"step": "a", "command": "instore-bench hot-path", "started": "2026-12-02T21:40:00Z",
                 "load_average": [0.5, 0.4, 0.3], "seconds": 12,
                 "results": [{"bench": "hot_path", "adverts_per_s": 1503880.0}]},
                {"step": "b", "command": "instore-bench ble", "started": "2026-12-02T21:41:00Z",
                 "load_average": [1.0, 0.5, 0.3], "seconds": 3, "results": [],
                 "error": "exited with 1 | x"},
                {"step": "sizes", "skipped": "--quick"},
            ],
        });
        let t = markdown(&report);
        assert!(
            t.contains("started 2026-12-02T21:40:00Z on x86_64 (2 × Xeon, 24 GiB"),
            "{t}"
        );
        assert!(
            t.contains("| `hot-path` | 21:40:00 | 0.5 0.4 0.3 | 12 s | **hot_path** adverts_per_s 1,503,880 |"),
            "{t}"
        );
        assert!(t.contains("**failed**: exited with 1 / x"), "{t}");
        assert!(t.contains("skipped (--quick)"), "{t}");
    }
}
