//! Notices that the rules file changed, by polling (the engine asks every couple of seconds).
//!
//! Polling the path, not watching an open file, is what makes editors' atomic saves (write a
//! temporary file, rename it over the old one) work: the path simply names a new inode with a
//! new mtime. A size and mtime change triggers a read, and only a change of content counts, so
//! `touch` does not reload. A missing file (mid-rename, or deleted) is not a change: the rules in
//! force stay.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    path::{Path, PathBuf},
    time::SystemTime,
};

#[derive(Debug)]
pub struct RulesWatch {
    path: PathBuf,
    stat: Option<(SystemTime, u64)>,
    hash: Option<u64>,
}

impl RulesWatch {
    /// Starts from the file as it is now (the rules just loaded from it).
    pub fn new(path: &Path) -> Self {
        let mut w = Self {
            path: path.to_path_buf(),
            stat: None,
            hash: None,
        };
        w.changed();
        w
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the file's content differs from the last look.
    pub fn changed(&mut self) -> bool {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return false;
        };
        let stat = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        if self.stat == Some(stat) {
            return false;
        }
        let Ok(bytes) = std::fs::read(&self.path) else {
            return false;
        };
        self.stat = Some(stat);
        let mut h = DefaultHasher::new();
        bytes.hash(&mut h);
        let hash = h.finish();
        let changed = self.hash.is_some_and(|old| old != hash);
        self.hash = Some(hash);
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_changes_and_atomic_renames_are_seen_but_touches_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, "a").unwrap();
        let mut w = RulesWatch::new(&path);
        assert!(!w.changed());
        std::fs::write(&path, "bb").unwrap();
        assert!(w.changed());
        assert!(!w.changed());
        // Same content rewritten: new mtime, same hash.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, "bb").unwrap();
        assert!(!w.changed());
        // Editor-style save: write aside, rename over.
        let tmp = dir.path().join(".rules.toml.swp");
        std::fs::write(&tmp, "ccc").unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(!w.changed(), "a missing file is not a change");
        std::fs::rename(&tmp, &path).unwrap();
        assert!(w.changed());
    }
}
