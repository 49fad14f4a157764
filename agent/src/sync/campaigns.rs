//! Head office's campaigns for this store, as the last change response carried them: kept in
//! `data_dir/campaigns.json` (written aside and renamed, so a crash leaves the old set or the
//! new one, never half), so a gateway that restarts offline still runs them.

use std::path::Path;

use instore_protocol::campaign::CampaignSet;

/// The set held, or the empty set when there is none (first start) or the file is unreadable
/// (logged: the next change response brings the set again).
pub fn load(path: &Path) -> CampaignSet {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<CampaignSet>(&bytes) {
            Ok(set) => set,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "campaigns file unreadable; starting without campaigns");
                CampaignSet::new(Vec::new())
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => CampaignSet::new(Vec::new()),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "campaigns file unreadable; starting without campaigns");
            CampaignSet::new(Vec::new())
        }
    }
}

pub fn save(path: &Path, set: &CampaignSet) -> std::io::Result<()> {
    let json = serde_json::to_vec(set).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // The rename is durable only once the directory is.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use instore_protocol::campaign::Campaign;

    #[test]
    fn a_saved_set_comes_back_and_a_broken_file_is_an_empty_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("campaigns.json");
        assert!(load(&path).campaigns.is_empty());
        let set = CampaignSet::new(vec![Campaign {
            id: "autumn".into(),
            version: 2,
            scope: "chain".into(),
            rules: "[[rules]]\n".into(),
        }]);
        save(&path, &set).unwrap();
        assert_eq!(load(&path), set);
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(load(&path), CampaignSet::new(Vec::new()));
    }
}
