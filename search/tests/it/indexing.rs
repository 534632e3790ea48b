//! The index as a projection: edits replace, deletes remove, batches keep event order, and
//! restarts resume from the checkpoint in the commit payload without skipping or doubling.

use schema::RoomId;
use search::SearchIndex;

use crate::harness::Harness;

#[tokio::test]
async fn edits_replace_the_text_and_deletes_remove_the_message() {
    let h = Harness::new().await;
    let room = RoomId::new();
    let (id, _) = h.send(room, "apple banana 사과").await;
    h.caught_up().await;
    let before = h.search("apple", &[room]).hits;
    assert_eq!(before.len(), 1);

    h.edit(room, id, "cherry 체리").await;
    h.caught_up().await;
    assert!(h.ids("apple", &[room]).is_empty(), "the old text is gone");
    assert!(h.ids("사과", &[room]).is_empty(), "the old text is gone");
    let after = h.search("체리", &[room]).hits;
    assert_eq!(after.len(), 1);
    // Same message, same place in the room and in time.
    assert_eq!(after[0].message_id, id);
    assert_eq!(after[0].seq, before[0].seq);
    assert_eq!(after[0].sent_at, before[0].sent_at);

    h.delete(room, id).await;
    h.caught_up().await;
    assert!(h.ids("cherry", &[room]).is_empty());
    assert_eq!(h.index.num_docs(), 0);
    h.close().await;
}

#[tokio::test]
async fn a_deleted_room_takes_its_messages_out_and_no_other_room_s() {
    let h = Harness::new().await;
    let (gone, kept) = (RoomId::new(), RoomId::new());
    h.send(gone, "apple one").await;
    h.caught_up().await; // one indexed and committed before, one still pending
    h.send(gone, "apple two").await;
    h.send(kept, "apple three").await;
    h.delete_room(gone).await;
    h.caught_up().await;
    assert!(h.ids("apple", &[gone]).is_empty());
    assert_eq!(h.ids("apple", &[gone, kept]).len(), 1);
    assert_eq!(h.index.num_docs(), 1);
    h.close().await;
}

#[tokio::test]
async fn send_edit_and_delete_in_one_batch_end_as_the_log_says() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = Harness::open(tmp.path()).await;
    let room = RoomId::new();
    // All appended before the indexer starts: it catches up over them in one batch.
    let (gone, _) = h.send(room, "one").await;
    h.edit(room, gone, "two").await;
    h.delete(room, gone).await;
    let (kept, _) = h.send(room, "alpha").await;
    h.edit(room, kept, "beta").await;
    h.edit(room, kept, "gamma").await;
    let (plain, _) = h.send(room, "delta").await;
    h.start();
    h.caught_up().await;
    for q in ["one", "two", "alpha", "beta"] {
        assert!(h.ids(q, &[room]).is_empty(), "{q}");
    }
    assert_eq!(h.ids("gamma", &[room]), [kept]);
    assert_eq!(h.ids("delta", &[room]), [plain]);
    assert_eq!(h.index.num_docs(), 2);
    h.close().await;
}

#[tokio::test]
async fn edits_and_deletes_of_messages_indexed_before_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let h = Harness::new_in(tmp.path()).await;
    let room = RoomId::new();
    let (edited, _) = h.send(room, "original words").await;
    let (deleted, _) = h.send(room, "doomed words").await;
    h.caught_up().await;
    let seq = h.search("original", &[room]).hits[0].seq;
    h.close().await;

    // While the indexer is down, the messages change.
    let mut h = Harness::open(tmp.path()).await;
    assert!(
        h.index.checkpoint().unwrap() > 0,
        "the checkpoint was committed"
    );
    h.edit(room, edited, "replacement words").await;
    h.delete(room, deleted).await;
    h.start();
    h.caught_up().await;
    let hits = h.search("words", &[room]).hits;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].message_id, edited);
    assert_eq!(hits[0].seq, seq);
    assert!(h.ids("original", &[room]).is_empty());
    assert!(h.ids("doomed", &[room]).is_empty());
    h.close().await;
}

#[tokio::test]
async fn a_restart_resumes_without_doubling_or_skipping() {
    let tmp = tempfile::tempdir().unwrap();
    let h = Harness::new_in(tmp.path()).await;
    let room = RoomId::new();
    for i in 0..30 {
        h.send(room, &format!("common first {i}")).await;
    }
    h.caught_up().await;
    h.close().await;
    let mut h = Harness::open(tmp.path()).await;
    for i in 0..20 {
        h.send(room, &format!("common second {i}")).await;
    }
    h.start();
    h.caught_up().await;
    assert_eq!(h.search("common", &[room]).total, 50);
    assert_eq!(h.search("second", &[room]).total, 20);
    assert_eq!(h.index.num_docs(), 50);
    h.close().await;
}

#[tokio::test]
async fn an_index_of_another_version_or_ahead_of_the_log_is_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let h = Harness::new_in(tmp.path()).await;
    let room = RoomId::new();
    h.send(room, "persistent message").await;
    h.caught_up().await;
    h.close().await;

    // Another version in the commit payload: opened empty, rebuilt from the log.
    let meta = tmp.path().join("search/meta.json");
    let text = std::fs::read_to_string(&meta).unwrap();
    let version = format!(r#"\"version\":{}"#, search::INDEX_VERSION);
    assert!(text.contains(&version), "{text}");
    std::fs::write(&meta, text.replace(&version, r#"\"version\":999"#)).unwrap();
    let mut h = Harness::open(tmp.path()).await;
    assert_eq!(h.index.checkpoint().unwrap(), 0);
    assert_eq!(h.index.num_docs(), 0);
    h.start();
    h.caught_up().await;
    assert_eq!(h.ids("persistent", &[room]).len(), 1);
    let checkpoint = h.index.checkpoint().unwrap();
    h.close().await;

    // A log shorter than the index's checkpoint: the index is from another log.
    let index = SearchIndex::open_for_log(tmp.path().join("search"), checkpoint - 1).unwrap();
    assert_eq!(index.checkpoint().unwrap(), 0);
    assert_eq!(index.num_docs(), 0);
    // The same log: kept.
    drop(index);
    let tmp2 = tempfile::tempdir().unwrap();
    let h = Harness::new_in(tmp2.path()).await;
    h.send(room, "kept").await;
    h.caught_up().await;
    let head = h.log_head().await;
    h.close().await;
    let index = SearchIndex::open_for_log(tmp2.path().join("search"), head).unwrap();
    assert_eq!(index.num_docs(), 1);
}

#[tokio::test]
async fn only_the_given_rooms_are_searched_and_counted() {
    let h = Harness::new().await;
    let (a, b, c) = (RoomId::new(), RoomId::new(), RoomId::new());
    for room in [a, b, c] {
        for i in 0..5 {
            h.send(room, &format!("shared word {i}")).await;
        }
    }
    h.caught_up().await;
    let page = h.search("shared", &[a, c]);
    assert_eq!(page.total, 10);
    assert_eq!(page.hits.len(), 10);
    assert!(
        page.hits
            .iter()
            .all(|hit| hit.room_id == a || hit.room_id == c)
    );
    assert_eq!(h.search("shared", &[b]).total, 5);
    assert_eq!(h.search("shared", &[]).total, 0);
    assert_eq!(h.search("shared", &[RoomId::new()]).total, 0);
    h.close().await;
}

#[tokio::test]
async fn sender_and_time_filters() {
    let h = Harness::new().await;
    let room = RoomId::new();
    let (alice, bob) = (schema::UserId::new(), schema::UserId::new());
    for i in 0..6 {
        let who = if i % 2 == 0 { alice } else { bob };
        h.send_as(room, who, &format!("filtered {i}")).await;
    }
    h.caught_up().await;
    let from_alice = h.search_with("filtered", &[room], |r| r.sender = Some(alice));
    assert_eq!(from_alice.total, 3);
    assert!(from_alice.hits.iter().all(|hit| hit.sender_id == alice));

    let all = h.search("filtered", &[room]).hits;
    // Newest first; take the sent times of the 2nd and 5th newest.
    let (newer, older) = (all[1].sent_at, all[4].sent_at);
    let window = h.search_with("filtered", &[room], |r| {
        r.from = Some(older);
        r.to = Some(newer);
    });
    // from is inclusive, to exclusive.
    assert!(
        window
            .hits
            .iter()
            .all(|hit| hit.sent_at >= older && hit.sent_at < newer)
    );
    assert!(
        window
            .hits
            .iter()
            .any(|hit| hit.message_id == all[4].message_id)
    );
    assert!(
        !window
            .hits
            .iter()
            .any(|hit| hit.message_id == all[1].message_id)
    );
    let empty = h.search_with("filtered", &[room], |r| {
        r.from = Some(newer);
        r.to = Some(older);
    });
    assert_eq!(empty.total, 0);
    h.close().await;
}

/// The indexer's thread and the Tantivy threads it starts (indexing, restarted at each commit,
/// and merging) run under `SCHED_IDLE` by default (`IndexerSettings::idle`).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn indexing_threads_run_under_sched_idle() {
    assert!(search::IndexerSettings::default().idle);
    let h = Harness::new().await;
    h.send(RoomId::new(), "wake the writer").await;
    h.caught_up().await;
    // Thread names as the kernel keeps them: 15 bytes at most. Tantivy restarts its indexing
    // threads at each commit, so look until they are there.
    let prefixes = ["search-indexer", "thrd-tantivy-in", "merge_thread_"];
    let seen = || prefixes.map(|p| priority::policy_of_threads(std::process::id(), p));
    let deadline = std::time::Instant::now() + crate::harness::DEADLINE;
    while seen().iter().any(Vec::is_empty) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for (prefix, policy) in prefixes.iter().zip(seen()) {
        assert!(!policy.is_empty(), "no {prefix} thread");
        assert!(
            policy.iter().all(|p| *p == priority::SCHED_IDLE),
            "{prefix}: {policy:?}"
        );
    }
    h.close().await;
}
