//! A bounded soak: messages flow into several rooms while every client's connection is dropped
//! at random moments (without a close handshake) and resumed from the seqs it holds. At the
//! end every client must hold every event of each of its rooms exactly once, in order.

use std::collections::HashMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Api, TestUser, spawn_app};

const ROOMS: usize = 3;
const USERS: usize = 6;
const MESSAGES_PER_ROOM: usize = 100;
/// One received frame in this many makes the client drop its connection.
const DROP_ONE_IN: u64 = 25;
const DEADLINE: Duration = Duration::from_secs(120);

/// A small deterministic generator (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Connects, resumes from `held`, and reads until every room reaches its final seq (once the
/// senders are done) or the connection is dropped at random. Returns whether it finished.
async fn session(
    api: &Api,
    user: &TestUser,
    held: &mut HashMap<String, Vec<u64>>,
    finals: &mut watch::Receiver<Option<HashMap<String, u64>>>,
    rng: &mut Rng,
) -> bool {
    let url = format!(
        "{}/v1/ws?access_token={}",
        api.base.replacen("http://", "ws://", 1),
        user.token
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    let rooms: HashMap<&String, u64> = held
        .iter()
        .map(|(room, seqs)| (room, seqs.last().copied().unwrap_or(0)))
        .collect();
    ws.send(Message::text(
        json!({"type": "resume", "rooms": rooms}).to_string(),
    ))
    .await
    .unwrap();
    loop {
        let done = finals.borrow().as_ref().is_some_and(|f| {
            f.iter()
                .filter(|(room, _)| held.contains_key(*room))
                .all(|(room, last)| held[room].last() == Some(last))
        });
        if done {
            return true;
        }
        tokio::select! {
            changed = finals.changed() => changed.unwrap(),
            msg = ws.next() => {
                let text = match msg.expect("open").expect("no error") {
                    Message::Text(t) => t,
                    Message::Close(frame) => panic!("server closed: {frame:?}"),
                    _ => continue,
                };
                let f: Value = serde_json::from_str(&text).unwrap();
                if f["type"] == "event" {
                    let room = f["room_id"].as_str().unwrap();
                    held.get_mut(room)
                        .unwrap_or_else(|| panic!("an event of a room not ours: {f}"))
                        .push(f["seq"].as_u64().unwrap());
                }
                if rng.next().is_multiple_of(DROP_ONE_IN) {
                    return false; // dropped: the socket goes away without a close frame
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_dropped_at_random_while_messages_flow_end_with_every_message_once_in_order() {
    let app = spawn_app().await;
    let mut users = Vec::new();
    for i in 0..USERS {
        users.push(app.user(&format!("soak{i}")).await);
    }
    // User i belongs to rooms i % ROOMS and (i + 1) % ROOMS.
    let mut rooms = Vec::new();
    for r in 0..ROOMS {
        let members: Vec<&TestUser> = users
            .iter()
            .enumerate()
            .filter(|(i, _)| i % ROOMS == r || (i + 1) % ROOMS == r)
            .map(|(_, u)| u)
            .collect();
        let (owner, others) = members.split_first().unwrap();
        rooms.push((
            app.create_room(owner, &format!("soak{r}"), others).await,
            members.iter().map(|u| (*u).clone()).collect::<Vec<_>>(),
        ));
    }

    let (finals_tx, finals_rx) = watch::channel(None);
    let mut clients = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let (api, user) = (app.api.clone(), user.clone());
        let mut held: HashMap<String, Vec<u64>> = rooms
            .iter()
            .filter(|(_, members)| members.iter().any(|m| m.id == user.id))
            .map(|(room, _)| (room.clone(), Vec::new()))
            .collect();
        let mut finals = finals_rx.clone();
        clients.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
            let mut sessions = 1;
            while !session(&api, &user, &mut held, &mut finals, &mut rng).await {
                sessions += 1;
            }
            (user.username, held, sessions)
        }));
    }

    // One sender per room, each member taking turns.
    let mut senders = Vec::new();
    for (room, members) in rooms.clone() {
        let api = app.api.clone();
        senders.push(tokio::spawn(async move {
            let mut last = 0;
            for n in 0..MESSAGES_PER_ROOM {
                let sender = &members[n % members.len()];
                last = api.send(sender, &room, &format!("message {n}")).await["seq"]
                    .as_u64()
                    .unwrap();
            }
            (room, last)
        }));
    }
    let mut finals = HashMap::new();
    for s in senders {
        let (room, last) = s.await.unwrap();
        finals.insert(room, last);
    }
    finals_tx.send(Some(finals.clone())).unwrap();

    let results = tokio::time::timeout(DEADLINE, futures::future::join_all(clients))
        .await
        .expect("every client caught up in time");
    let mut reconnects = 0;
    for result in results {
        let (name, held, sessions) = result.unwrap();
        reconnects += sessions - 1;
        for (room, seqs) in held {
            let want: Vec<u64> = (1..=finals[&room]).collect();
            assert_eq!(seqs, want, "{name} in {room}: every event once, in order");
        }
    }
    assert!(
        reconnects >= USERS,
        "the soak must actually drop connections (only {reconnects} reconnects)"
    );
}
