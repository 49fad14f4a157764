//! `instore-bench all` end to end on its quickest step: the child's figures reach the JSON run,
//! the table on stdout and the generated section of a Markdown file, with the machine, the
//! load and the time; the hand-written rest of the file is kept.
#![allow(clippy::expect_used)]

use std::{path::Path, process::Command};

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_instore-bench");

fn all(args: &[&str]) -> std::process::Output {
    Command::new(BENCH)
        .arg("all")
        .args(args)
        .output()
        .expect("running instore-bench all")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

#[test]
fn a_quick_run_writes_its_figures_as_json_a_table_and_a_markdown_section() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("run").join("all.json");
    let md = dir.path().join("BENCHMARKS.md");
    std::fs::write(&md, "# Benchmarks\n\nhand-written history\n").expect("writing the doc");

    let run = all(&[
        "--quick",
        "--only",
        "hot-path-100k,sizes",
        "--out",
        path(&out),
        "--markdown",
        path(&md),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "all failed: {stderr}");

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("the JSON run")).expect("JSON");
    assert_eq!(report["machine"]["arch"], std::env::consts::ARCH);
    assert!(report["machine"]["cpus"].as_u64() > Some(0));
    let steps = report["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{report:#}");
    let hot = &steps[0];
    assert_eq!(hot["step"], "hot-path-100k");
    assert!(hot.get("error").is_none(), "{hot:#}");
    assert_eq!(hot["load_average"].as_array().map(Vec::len), Some(3));
    let started = hot["started"].as_str().expect("started");
    assert!(started.parse::<jiff::Timestamp>().is_ok(), "{started}");
    let result = &hot["results"][0];
    assert_eq!(result["bench"], "hot_path");
    assert_eq!(result["members"], 2000);
    assert!(result["adverts_per_s"].as_f64() > Some(0.0), "{result}");
    // `sizes` builds release binaries: not in a quick run, and the run says so.
    assert_eq!(steps[1]["step"], "sizes");
    assert_eq!(steps[1]["skipped"], "--quick");

    let table = String::from_utf8_lossy(&run.stdout);
    assert!(
        table.contains("| `hot-path --members 2000 --adverts 10000 --present 100` |"),
        "{table}"
    );
    assert!(table.contains("**hot_path** "), "{table}");
    assert!(
        table.contains(&format!("on {} (", std::env::consts::ARCH)),
        "{table}"
    );

    let doc = std::fs::read_to_string(&md).expect("the doc");
    assert!(
        doc.starts_with("# Benchmarks\n\nhand-written history\n"),
        "{doc}"
    );
    assert!(
        doc.contains(table.as_ref()),
        "the section is the table printed:\n{doc}"
    );

    // Regenerating from the JSON leaves the file as it is.
    let again = all(&["--from", path(&out), "--markdown", path(&md)]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(std::fs::read_to_string(&md).expect("the doc"), doc);
}

#[test]
fn an_unknown_step_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("all.json");
    let run = all(&["--only", "hot-path,nope", "--out", path(&out)]);
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("no step \"hot-path\""),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(!out.exists());
}
