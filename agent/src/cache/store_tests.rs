//! `members.db` with real SQLite files: imports, migration from version 2, change responses and
//! snapshots applied in one transaction.

use instore_protocol::changes::{Change, ChangeOp, ChannelChanges, RemoveReason};

use super::*;

const LINE: &str = r#"{"member_id":"M1","display_name":"Ms. Li","tier":"platinum","consent":{"presence":true},"identifiers":[{"kind":"mac","address":"C0:11:22:33:44:55"}]}"#;

fn import(cache: &MemberCache, text: &str) -> ImportReport {
    cache.import_ndjson(&mut text.as_bytes()).unwrap()
}

#[test]
fn an_import_is_streamed_into_the_local_channel_and_bad_lines_are_reported_by_number() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("members.db");
    let cache = MemberCache::open(&path).unwrap();
    let dup = LINE.replace("M1", "M2");
    let report = import(&cache, &format!("{LINE}\n{{broken\n\n{dup}\n"));
    assert_eq!(report.imported, 1);
    let lines: Vec<usize> = report.skipped.iter().map(|e| e.line).collect();
    assert_eq!(lines, [2, 4]);
    assert!(matches!(
        &report.skipped[1].error,
        MemberError::DuplicateIdentifier { other, .. } if other == "M1"
    ));
    let again = MemberCache::open(&path).unwrap();
    let index = again.load_index().unwrap();
    assert_eq!(index.len(), 1);
    assert!(index.mac(&[0xC0, 0x11, 0x22, 0x33, 0x44, 0x55]).is_some());
    assert_eq!(again.channels().unwrap().get(LOCAL_CHANNEL), Some(&0));
    // Importing the same file again changes nothing and reports the same.
    let report = import(&again, LINE);
    assert_eq!((report.imported, again.load().unwrap().len()), (1, 1));
}

#[test]
fn a_cache_file_from_before_channels_is_migrated_with_its_snapshot_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        // What a version-2 agent wrote after taking head office's snapshot 4.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!("{SCHEMA_V1}{SCHEMA_V2}PRAGMA user_version = 2;"))
            .unwrap();
        conn.execute("INSERT INTO meta (key, value) VALUES ('version', 4)", [])
            .unwrap();
        conn.execute(
            "INSERT INTO members (member_id, record) VALUES ('M1', ?1)",
            [LINE],
        )
        .unwrap();
    }
    let cache = MemberCache::open(&path).unwrap();
    assert_eq!(cache.version().unwrap(), 4, "the snapshot version survives");
    assert_eq!(cache.channels().unwrap().get(LEGACY_CHANNEL), Some(&4));
    let members = cache.members().unwrap();
    assert_eq!(members.index.len(), 1);
    let conn = cache.connect().unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, MIGRATIONS.len() as i64);
    // The first change response from a head office with channels replaces the legacy set.
    let response = ChangesResponse {
        v: 1,
        campaigns: None,
        store_id: "s".into(),
        channels: vec![ChannelChanges {
            channel: "chain".into(),
            from: 0,
            to: 1,
            head: 1,
            snapshot: None,
            changes: vec![Change {
                version: 1,
                op: ChangeOp::Upsert {
                    rev: 1,
                    member: serde_json::from_str(&LINE.replace("M1", "M9").replace("C0:", "C1:"))
                        .unwrap(),
                },
            }],
        }],
    };
    let (patch, stats) = cache.apply_response(&response).unwrap();
    assert_eq!(stats.dropped, [LEGACY_CHANNEL]);
    let ids: Vec<String> = cache
        .load()
        .unwrap()
        .into_iter()
        .map(|m| m.member_id)
        .collect();
    assert_eq!(ids, ["M9"]);
    assert_eq!(patch.version, 1);
    assert_eq!(patch.gone().count(), 1);
}

#[test]
fn a_cache_file_from_a_newer_agent_is_refused_not_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = MemberCache::open(&path).unwrap_err();
    assert!(matches!(err, CacheError::TooNew { found: 99, .. }), "{err}");
}

#[test]
fn a_snapshot_whose_content_is_wrong_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = MemberCache::open(&dir.path().join("m.db")).unwrap();
    import(&cache, LINE);
    let header = r#"{"v":1,"channel":"chain","version":5,"members":2,"created_ms":0}"#;
    let line = format!(
        r#"{{"rev":1,"member":{}}}"#,
        LINE.replace("M1", "M2").replace("C0:", "C2:")
    );
    // Says two members, holds one: refused whole.
    let text = format!("{header}\n{line}\n");
    let err = cache
        .apply_snapshot("chain", 5, 2, &mut text.as_bytes(), |_| {})
        .unwrap_err();
    assert!(
        matches!(err, SnapshotFormatError::Count { got: 1, want: 2 }),
        "{err}"
    );
    assert_eq!(cache.load().unwrap().len(), 1);
    assert!(!cache.channels().unwrap().contains_key("chain"));
    // The right header and lines apply in one go.
    let text = format!(
        "{}\n{line}\n",
        header.replace("\"members\":2", "\"members\":1")
    );
    let stats = cache
        .apply_snapshot("chain", 5, 1, &mut text.as_bytes(), |_| {})
        .unwrap();
    assert_eq!(stats.applied, 1);
    assert_eq!(cache.channels().unwrap()["chain"], 5);
    assert_eq!(cache.load_index().unwrap().len(), 2);
}

#[test]
fn a_removed_members_record_is_overwritten_in_the_file_not_left_in_free_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let cache = MemberCache::open(&path).unwrap();
    let marker = "Quite-Unique-Display-Name";
    let record: MemberRecord = serde_json::from_str(&LINE.replace("Ms. Li", marker)).unwrap();
    let entry = |from, to, op| ChangesResponse {
        v: 1,
        campaigns: None,
        store_id: "s".into(),
        channels: vec![ChannelChanges {
            channel: "chain".into(),
            from,
            to,
            head: to,
            snapshot: None,
            changes: vec![Change { version: to, op }],
        }],
    };
    cache
        .apply_response(&entry(
            0,
            1,
            ChangeOp::Upsert {
                rev: 1,
                member: record,
            },
        ))
        .unwrap();
    assert!(cache.checkpoint().unwrap());
    let (patch, _) = cache
        .apply_response(&entry(
            1,
            2,
            ChangeOp::Remove {
                member_id: "M1".into(),
                rev: 2,
                reason: RemoveReason::ConsentWithdrawn,
            },
        ))
        .unwrap();
    assert_eq!(patch.gone().count(), 1);
    assert!(cache.checkpoint().unwrap());
    for f in ["m.db", "m.db-wal"] {
        let bytes = std::fs::read(dir.path().join(f)).unwrap_or_default();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "{f} still holds the record"
        );
    }
}
