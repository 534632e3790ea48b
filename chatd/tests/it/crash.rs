//! Kill the real `chatd` (SIGKILL) while sends are in flight: after a restart every
//! acknowledged message is there with the seq it was acknowledged with, seqs have no gaps, and
//! the read models equal a fresh rebuild from the log. Also: SIGTERM drains and exits cleanly.
//!
//! A killed process loses nothing the kernel already has: its writes sit in the page cache and
//! reach the disk later. To also cover a lost page cache (a power cut), the data dir lives on
//! its own ext4 file system on a loop device where this process may make one (root, `losetup`,
//! `mkfs.ext4`, `mount`; device-mapper's `dm-flakey` is not used: this sandbox has no
//! device-mapper). There:
//!
//! - **a flush per acknowledged send**: fifty sends, one at a time, must cost at least fifty
//!   flushes of that device (`/sys/block/loopN/stat`). An append is acknowledged after its
//!   `COMMIT`; with `synchronous=FULL` each commit fsyncs the log's WAL, and an ext4 fsync
//!   flushes the device. Measured here: about 2.5 flushes per send with `FULL`, 13 in all with
//!   `NORMAL` (from checkpoints and search commits). This observes the live process, not the
//!   pragma itself: it cannot tell which file was synced, and a very slow run with `NORMAL`
//!   could reach fifty from search commits alone; the power-cut check below still fails then.
//! - **the disk as a power cut leaves it**: right after the SIGKILL the loop device's backing
//!   file is copied and the copy mounted on a second loop device. The copy holds what reached
//!   the device: everything fsynced, plus whatever the kernel wrote back by chance; the page
//!   cache of the crashed file system is not in it. The same checks run on that copy. With
//!   `synchronous=NORMAL` on the event log, whole rooms are gone from it.
//! - `echo 3 > /proc/sys/vm/drop_caches` before reading back (when permitted). It only evicts
//!   clean pages (dirty ones are written first), so it loses nothing: it makes the restarted
//!   process read what is on the device rather than what is in memory.
//!
//! Not proved: that every crash point is survived (this is one point, mid-traffic), that a
//! disk cache reordering writes between flushes is survived (the loop driver writes the backing
//! file in order; only writeback racing the copy can mix older and newer blocks), torn
//! sectors, or fsync errors (`dm-flakey`/`dm-error` territory). Where the loop device cannot be made, the
//! flush and power-cut checks are recorded as skipped (`test_support::skip!`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::helpers::{Api, ChatdProcess, TestUser, rebuild};

/// (room, message_id) -> (seq, body) of every acknowledged send.
type Acked = Arc<Mutex<HashMap<(String, String), (u64, String)>>>;

/// Everything a client can read, for comparing two servers' read models.
async fn snapshot(api: &Api, users: &[&TestUser], rooms: &[String]) -> Value {
    let mut out = serde_json::Map::new();
    for u in users {
        let (status, list) = api.get("/v1/rooms", &u.token).await;
        assert_eq!(status, StatusCode::OK);
        out.insert(format!("rooms of {}", u.username), list);
    }
    for r in rooms {
        let (_, detail) = api.get(&format!("/v1/rooms/{r}"), &users[0].token).await;
        out.insert(format!("room {r}"), detail);
        out.insert(
            format!("history {r}"),
            Value::Array(api.full_history(users[0], r).await),
        );
    }
    Value::Object(out)
}

/// An ext4 file system of its own, on a loop device over a sparse file, mounted on a temp dir.
#[derive(Debug)]
struct LoopFs {
    image: PathBuf,
    device: String,
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    /// A fresh file system; `Err` says why one cannot be made here.
    fn new() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(128 << 20))
            .map_err(|e| e.to_string())?;
        run(Command::new("mkfs.ext4").arg("-q").arg("-F").arg(&image))?;
        let fs = Self::attach(image, dir)?;
        fs.mount()?;
        Ok(fs)
    }

    /// `image` on a free loop device, not mounted yet.
    fn attach(image: PathBuf, dir: tempfile::TempDir) -> Result<Self, String> {
        let device = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image))?
        .trim()
        .to_owned();
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).map_err(|e| e.to_string())?;
        Ok(Self {
            image,
            device,
            mount,
            _dir: dir,
        })
    }

    fn mount(&self) -> Result<(), String> {
        run(Command::new("mount").arg(&self.device).arg(&self.mount)).map(drop)
    }

    fn data_dir(&self) -> PathBuf {
        self.mount.clone()
    }

    /// Flush requests the device has completed (the 16th field of its `stat`).
    fn flushes(&self) -> u64 {
        let name = self.device.trim_start_matches("/dev/");
        let stat = std::fs::read_to_string(format!("/sys/block/{name}/stat")).unwrap();
        let fields: Vec<&str> = stat.split_whitespace().collect();
        assert!(fields.len() >= 17, "no flush counts in {name}/stat: {stat}");
        fields[15].parse().unwrap()
    }

    /// What the device holds now, without writing back this file system's page cache: a copy
    /// of the backing file, mounted on its own loop device. `None` (recorded as skipped) when
    /// no loop device is free.
    fn power_cut_copy(&self) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        sparse_copy(&self.image, &image);
        match Self::attach(image, dir) {
            Ok(copy) => {
                copy.mount()
                    .expect("the disk as a power cut left it mounts");
                Some(copy)
            }
            Err(e) => {
                test_support::skip!(
                    "no second loop device ({e}): the power-cut check does not run"
                );
                None
            }
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = run(Command::new("umount").arg("-l").arg(&self.mount));
        let _ = run(Command::new("losetup").arg("-d").arg(&self.device));
    }
}

/// Copies `from` by reading every byte of it (through the page cache of the file system it
/// is on, which holds what the loop device wrote), writing only the blocks that are not zero:
/// the copy is as sparse as the original, without trusting hole detection (`SEEK_DATA`, FIEMAP)
/// on a file that is still being written.
fn sparse_copy(from: &Path, to: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut src = std::fs::File::open(from).unwrap();
    let mut dst = std::fs::File::create(to).unwrap();
    let mut block = vec![0u8; 64 << 10];
    loop {
        let n = src.read(&mut block).unwrap();
        if n == 0 {
            break;
        }
        if block[..n].iter().all(|b| *b == 0) {
            dst.seek(SeekFrom::Current(n as i64)).unwrap();
        } else {
            dst.write_all(&block[..n]).unwrap();
        }
    }
    dst.set_len(src.metadata().unwrap().len()).unwrap();
}

/// Runs a command; its stdout, or why it did not run or failed.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `echo 3 > /proc/sys/vm/drop_caches`, or a skip record.
fn drop_page_cache() {
    if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "3") {
        test_support::skip!("cannot drop the page cache before reading back: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_messages_survive_sigkill_and_a_lost_page_cache() {
    let disk = LoopFs::new()
        .map_err(|e| {
            test_support::skip!(
                "no loop-mounted file system ({e}): the flush-per-send and power-cut checks do not run"
            )
        })
        .ok();
    let tmp = tempfile::tempdir().unwrap();
    let dir = disk
        .as_ref()
        .map_or(tmp.path().to_owned(), LoopFs::data_dir);
    let mut server = ChatdProcess::start(&dir).await;
    let api = server.api.clone();
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let mut rooms = Vec::new();
    for name in ["one", "two", "three"] {
        rooms.push(api.create_room(&alice, name, &[&bob]).await);
    }
    let acked: Acked = Arc::default();

    // One send at a time: each acknowledgement follows its own fsync.
    if let Some(disk) = &disk {
        let before = disk.flushes();
        for i in 0..50 {
            let v = api
                .send(&alice, &rooms[0], &format!("one at a time {i}"))
                .await;
            acked.lock().unwrap().insert(
                (
                    rooms[0].clone(),
                    v["message_id"].as_str().unwrap().to_owned(),
                ),
                (v["seq"].as_u64().unwrap(), format!("one at a time {i}")),
            );
        }
        let flushes = disk.flushes() - before;
        assert!(
            flushes >= 50,
            "50 acknowledged sends, {flushes} device flushes: appends are acknowledged before they are on disk"
        );
    }

    // Concurrent sends, killed mid-flight.
    let (count_tx, mut count_rx) = watch::channel(0usize);
    let count_tx = Arc::new(count_tx);
    let mut senders = Vec::new();
    for worker in 0..8 {
        let (api, acked, count_tx, rooms) =
            (api.clone(), acked.clone(), count_tx.clone(), rooms.clone());
        let user = if worker % 2 == 0 {
            alice.clone()
        } else {
            bob.clone()
        };
        senders.push(tokio::spawn(async move {
            for i in 0..100_000 {
                let room = &rooms[i % rooms.len()];
                let body = format!("w{worker} m{i}");
                let sent = api
                    .http
                    .post(format!("{}/v1/rooms/{room}/messages", api.base))
                    .bearer_auth(&user.token)
                    .json(&json!({"body": body, "client_msg_id": format!("w{worker}-{i}")}))
                    .send()
                    .await;
                // The server died: whatever was not answered was not acknowledged.
                let Ok(resp) = sent else { return };
                if resp.status() != StatusCode::CREATED {
                    return;
                }
                let Ok(v) = resp.json::<Value>().await else {
                    return;
                };
                let id = v["message_id"].as_str().unwrap().to_owned();
                acked
                    .lock()
                    .unwrap()
                    .insert((room.clone(), id), (v["seq"].as_u64().unwrap(), body));
                count_tx.send_modify(|n| *n += 1);
            }
        }));
    }
    tokio::time::timeout(Duration::from_secs(120), count_rx.wait_for(|n| *n >= 300))
        .await
        .expect("300 sends acknowledged within 2 minutes")
        .unwrap();
    server.kill9();
    server.wait().await;
    let power_cut = disk.as_ref().and_then(LoopFs::power_cut_copy);
    for s in senders {
        s.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300);
    drop_page_cache();

    check_after_crash("SIGKILL", &dir, &acked, &alice, &bob, &rooms).await;
    if let Some(cut) = &power_cut {
        let keep = std::path::PathBuf::from(format!("/tmp/powercut-{}.img", std::process::id()));
        sparse_copy(&cut.image, &keep);
        check_after_crash("power cut", &cut.data_dir(), &acked, &alice, &bob, &rooms).await;
        let _ = std::fs::remove_file(&keep);
    }
}

/// Restarts on `dir` after a crash: every acknowledged message is there at its seq, seqs have
/// no gaps, new sends continue them, and the read models equal a fresh rebuild.
async fn check_after_crash(
    crash: &str,
    dir: &Path,
    acked: &HashMap<(String, String), (u64, String)>,
    alice: &TestUser,
    bob: &TestUser,
    rooms: &[String],
) {
    // Tokens stay valid (the JWT secret is kept in the data dir).
    let mut server = ChatdProcess::start(dir).await;
    let api = server.api.clone();
    let mut stored = HashMap::new();
    for room in rooms {
        let history = api.full_history(alice, room).await;
        let seqs: Vec<u64> = history.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "after a {crash}: gapless seqs in {room}"
        );
        for e in history.iter().filter(|e| e["type"] == "message_sent") {
            let key = (room.clone(), e["message_id"].as_str().unwrap().to_owned());
            stored.insert(
                key,
                (
                    e["seq"].as_u64().unwrap(),
                    e["body"].as_str().unwrap().to_owned(),
                ),
            );
        }
    }
    let mut missing: Vec<_> = acked
        .iter()
        .filter(|(k, v)| stored.get(*k) != Some(*v))
        .map(|((r, _), (seq, body))| (r.clone(), *seq, body.clone()))
        .collect();
    missing.sort();
    if !missing.is_empty() {
        for room in rooms {
            let max_stored = stored
                .iter()
                .filter(|((r, _), _)| r == room)
                .map(|(_, (s, _))| *s)
                .max();
            let max_acked = acked
                .iter()
                .filter(|((r, _), _)| r == room)
                .map(|(_, (s, _))| *s)
                .max();
            eprintln!("DEBUG room {room}: max stored {max_stored:?}, max acked {max_acked:?}");
        }
        eprintln!("DEBUG missing {}: {missing:?}", missing.len());
        panic!("after a {crash}: acknowledged messages lost");
    }

    // New sends continue the sequence.
    let next = api.send(alice, &rooms[0], "after the crash").await;
    let last = stored
        .iter()
        .filter(|((r, _), _)| r == &rooms[0])
        .map(|(_, (s, _))| *s)
        .max()
        .unwrap();
    assert_eq!(next["seq"].as_u64().unwrap(), last + 1);

    // Graceful stop, rebuild the read models from the log, compare.
    let live = snapshot(&api, &[alice, bob], rooms).await;
    server.terminate();
    assert!(server.wait().await.success(), "SIGTERM exits cleanly");
    rebuild(dir).await;
    let mut server = ChatdProcess::start(dir).await;
    let rebuilt = snapshot(&server.api, &[alice, bob], rooms).await;
    assert_eq!(
        live, rebuilt,
        "after a {crash}: the read models equal a fresh rebuild"
    );
    server.terminate();
    assert!(server.wait().await.success());
}

/// A server whose read models are behind its log at start (after a power cut they lose what
/// they had not synced; here they are deleted, so they rebuild from the start) serves nothing
/// from them until they have caught up: the first request after the start sees every message
/// and not the deleted one's text, or is told to retry (503 `not_ready`, `Retry-After`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_wait_for_the_read_models_to_catch_up_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChatdProcess::start(dir.path()).await;
    let api = server.api.clone();
    let alice = api.user("alice").await;
    let room = api.create_room(&alice, "catch-up", &[]).await;
    // Enough events that replaying them takes a while.
    let mut senders = Vec::new();
    for worker in 0..8 {
        let (api, alice, room) = (api.clone(), alice.clone(), room.clone());
        senders.push(tokio::spawn(async move {
            for i in 0..250 {
                api.send(&alice, &room, &format!("w{worker} m{i}")).await;
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let secret = api.send(&alice, &room, "deleted before the restart").await;
    let id = secret["message_id"].as_str().unwrap();
    let (status, body) = api
        .delete(&format!("/v1/rooms/{room}/messages/{id}"), &alice.token)
        .await;
    assert!(status.is_success(), "{status} {body}");
    let last_seq = api.full_history(&alice, &room).await.last().unwrap()["seq"]
        .as_u64()
        .unwrap();
    server.terminate();
    assert!(server.wait().await.success());
    for file in ["readmodels.db", "readmodels.db-wal", "readmodels.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(file));
    }

    let server = ChatdProcess::start(dir.path()).await;
    let page = server
        .api
        .http
        .get(format!(
            "{}/v1/rooms/{room}/messages?limit=5",
            server.api.base
        ))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    let status = page.status();
    let retry = page.headers().get("retry-after").cloned();
    let text = page.text().await.unwrap();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["code"], "not_ready", "{text}");
        assert!(retry.is_some(), "503 without Retry-After");
        return;
    }
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(
        !text.contains("deleted before the restart"),
        "a deleted message's text served before the read models caught up: {text}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    let newest = v["events"].as_array().unwrap().last().unwrap()["seq"].as_u64();
    assert_eq!(
        newest,
        Some(last_seq),
        "the first read after the start misses the log's tail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_answers_in_flight_requests_and_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChatdProcess::start(dir.path()).await;
    let api = server.api.clone();
    let alice = api.user("alice").await;
    let room = api.create_room(&alice, "drain", &[]).await;

    let (started_tx, mut started_rx) = watch::channel(0usize);
    let started_tx = Arc::new(started_tx);
    let mut senders = Vec::new();
    for worker in 0..6 {
        let (api, user, room, started_tx) =
            (api.clone(), alice.clone(), room.clone(), started_tx.clone());
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..100_000 {
                let resp = api
                    .http
                    .post(format!("{}/v1/rooms/{room}/messages", api.base))
                    .bearer_auth(&user.token)
                    .json(&json!({"body": format!("w{worker} m{i}")}))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        acked.push(
                            r.json::<Value>().await.unwrap()["message_id"]
                                .as_str()
                                .unwrap()
                                .to_owned(),
                        );
                        started_tx.send_modify(|n| *n += 1);
                    }
                    // Refused during shutdown (connection closed or 503): not acknowledged.
                    _ => return acked,
                }
            }
            acked
        }));
    }
    tokio::time::timeout(Duration::from_secs(60), started_rx.wait_for(|n| *n >= 50))
        .await
        .unwrap()
        .unwrap();
    server.terminate();
    assert!(server.wait().await.success(), "graceful exit");
    let mut acked = Vec::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }

    let server = ChatdProcess::start(dir.path()).await;
    let history = server.api.full_history(&alice, &room).await;
    let stored: std::collections::HashSet<&str> = history
        .iter()
        .filter_map(|e| e["message_id"].as_str())
        .collect();
    for id in &acked {
        assert!(
            stored.contains(id.as_str()),
            "acknowledged {id} missing after graceful shutdown"
        );
    }
}
