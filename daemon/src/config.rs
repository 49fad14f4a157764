//! A daemon's TOML config file: read, parsed into the daemon's own types, and every error naming
//! the file, the key and its line, so `check-config` tells an operator what to change where.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Syntax and type errors; toml's message carries the line, column and key.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// A required key that is not there, named in full (`http.listen`).
    #[error("{path}: key `{key}` {reason}")]
    Missing {
        path: String,
        key: String,
        reason: String,
    },
    /// A value that parses but makes no sense. `line` is 0 when the key is absent from the text
    /// (or the config was built in code).
    #[error("{path}: key `{key}` (line {line}): {reason}")]
    Invalid {
        path: String,
        key: String,
        line: usize,
        reason: String,
    },
}

/// The top level of a daemon's config: which keys it has, and which of them are tables.
#[derive(Debug, Clone, Copy)]
pub struct TopLevel {
    pub keys: &'static [&'static str],
    pub tables: &'static [&'static str],
}

/// The text of the config file at `path`.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// `text` parsed as `T`; `origin` names it in errors.
///
/// toml reports a missing key as "missing field `listen`" at the span of the table that lacks it
/// (line 1 for a top-level key, however long the file): an operator needs the key's full name and
/// the line of the table to add it to, which this gives.
pub fn parse<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
    top: TopLevel,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| parse_error(text, origin, &e, top))
}

fn parse_error(text: &str, origin: &str, e: &toml::de::Error, top: TopLevel) -> ConfigError {
    let message = e.message();
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'));
    let Some(field) = missing else {
        return ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        };
    };
    // The span starts at the header of the table that lacks the key. A top-level key's span is
    // the whole document, which may start with a table header too, so top-level names are
    // recognised by name (no table of these configs has a key of the same name).
    let top_level = top.keys.contains(&field);
    let table = e.span().filter(|_| !top_level).and_then(|span| {
        let start = text.get(..span.start)?;
        let line = text[start.len()..].lines().next()?.trim();
        let name = line.strip_prefix('[')?.split(']').next()?.trim();
        (!name.is_empty()).then(|| name.to_string())
    });
    let (key, line) = match &table {
        Some(t) => (
            format!("{t}.{field}"),
            line_of_key(text, None, &format!("[{t}]")),
        ),
        None => (field.to_string(), 0),
    };
    let reason = if line > 0 {
        format!("missing (required in the table that starts at line {line})")
    } else if table.is_none() && top.tables.contains(&field) {
        format!("missing: add a `[{field}]` table")
    } else {
        "missing".to_string()
    };
    ConfigError::Missing {
        path: origin.to_string(),
        key,
        reason,
    }
}

/// The 1-based line where `key` is assigned inside `[table]` (or at the top level when `table` is
/// `None`), or where a `[table]`-style `key` header sits; 0 when absent (a missing key).
///
/// Unlike a plain text search this knows which table a line belongs to: `listen` appears under
/// both `[http]` and `[broker]` of head office's config.
pub fn line_of_key(text: &str, table: Option<&str>, key: &str) -> usize {
    let mut current: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(header) = line.strip_prefix('[') {
            if line == key {
                return i + 1;
            }
            let name = header.split(']').next().unwrap_or("").trim();
            current = Some(name.to_string());
            continue;
        }
        if current.as_deref() != table {
            continue;
        }
        if assigns(line, key) {
            return i + 1;
        }
    }
    0
}

/// The 1-based line where `key` is first assigned in any table, or 0 when it is absent: for keys
/// whose name is unique across the file.
pub fn first_line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| assigns(l.trim_start(), key))
        .map_or(0, |i| i + 1)
}

fn assigns(line: &str, key: &str) -> bool {
    line.strip_prefix(key)
        .is_some_and(|rest| rest.trim_start().starts_with('='))
}

/// Makes a relative `path` relative to `base` (the config file's folder), so that a unit file
/// and a shell in another folder see the same config.
pub fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

/// [`resolve`] for an optional path.
pub fn resolve_opt(base: &Path, path: &mut Option<PathBuf>) {
    if let Some(p) = path {
        resolve(base, p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "data_dir = \"d\"\n\n[http]\nlisten = \"a\"\n\n[broker]\nlisten = \"b\"\n";
    const TOP: TopLevel = TopLevel {
        keys: &["data_dir", "http", "broker"],
        tables: &["http", "broker"],
    };

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Cfg {
        data_dir: String,
        http: Listen,
        broker: Listen,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Listen {
        listen: String,
        port: Option<u16>,
    }

    fn error(text: &str) -> String {
        match parse::<Cfg>(text, "c.toml", TOP) {
            Ok(c) => panic!("parsed: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn line_of_key_knows_which_table_a_key_is_in() {
        assert_eq!(line_of_key(TEXT, Some("http"), "listen"), 4);
        assert_eq!(line_of_key(TEXT, Some("broker"), "listen"), 7);
        assert_eq!(line_of_key(TEXT, None, "data_dir"), 1);
        assert_eq!(line_of_key(TEXT, None, "[broker]"), 6);
        assert_eq!(line_of_key(TEXT, Some("broker"), "url"), 0);
        assert_eq!(first_line_of_key(TEXT, "listen"), 4);
        assert_eq!(first_line_of_key(TEXT, "listener"), 0);
    }

    #[test]
    fn a_missing_key_is_named_in_full_with_the_line_of_its_table() {
        let err = error("data_dir = \"d\"\n[http]\nlisten = \"a\"\n[broker]\nport = 1\n");
        assert_eq!(
            err,
            "c.toml: key `broker.listen` missing (required in the table that starts at line 4)"
        );
        assert_eq!(
            error("data_dir = \"d\"\n[broker]\nlisten = \"b\"\n"),
            "c.toml: key `http` missing: add a `[http]` table"
        );
        assert_eq!(
            error("[http]\nlisten = \"a\"\n[broker]\nlisten = \"b\"\n"),
            "c.toml: key `data_dir` missing"
        );
    }

    #[test]
    fn a_type_error_keeps_tomls_line_and_key() {
        let err = error("data_dir = \"d\"\n[http]\nlisten = \"a\"\nport = \"x\"\n");
        assert!(err.starts_with("c.toml: "), "{err}");
        assert!(err.contains("line 4") && err.contains("port"), "{err}");
    }

    #[test]
    fn an_unreadable_file_names_its_path() {
        let err = read(Path::new("/nonexistent/instore.toml"))
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.starts_with("cannot read /nonexistent/instore.toml: ")),
            "{err:?}"
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let base = Path::new("/etc/instore");
        let mut rel = PathBuf::from("data");
        let mut abs = PathBuf::from("/var/lib/instore");
        let mut none = None;
        let mut some = Some(PathBuf::from("rules.toml"));
        resolve(base, &mut rel);
        resolve(base, &mut abs);
        resolve_opt(base, &mut none);
        resolve_opt(base, &mut some);
        assert_eq!(rel, Path::new("/etc/instore/data"));
        assert_eq!(abs, Path::new("/var/lib/instore"));
        assert_eq!(none, None);
        assert_eq!(some, Some(PathBuf::from("/etc/instore/rules.toml")));
    }
}
