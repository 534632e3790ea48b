//! The load generator's bookkeeping, with no I/O: what was sent, answered and delivered, when,
//! and what that adds up to. Each connection keeps a [`Ledger`] fed with timestamped
//! observations; [`settle`] merges them at the end of a run. Tests drive it with made-up
//! streams (loss, duplicates, reordering, late and missing answers) and check the totals.
//!
//! The rules:
//! - **Latency** is measured from a message's *intended* send time (open loop), for messages
//!   intended inside the measured window. A send that fails, is never answered, or a delivery
//!   that never arrives is recorded at [`CEILING_US`] (one hour): it is in the tail, not dropped.
//! - **Sustained rates** count answers and deliveries by *arrival* time inside the window, so a
//!   server that falls behind shows a sustained rate below the offered one.
//! - A **delivery** is a message event received by a connection other than the one that sent
//!   it; the sender's own copy is an **echo**, counted apart. Events of earlier runs (the same
//!   rooms are reused) are **foreign**: seq-tracked, not counted as deliveries.
//! - Per room, each connection must receive every seq once and in order: a seq still missing
//!   at the end although a later one arrived is **lost** (a hole: the stream skipped it); seqs
//!   after the last one a connection received, up to the room's last acknowledged seq, are
//!   **behind** (not arrived when the run ended: a server that is late, not one that skipped;
//!   those intended inside the window are also undelivered, in the latency tail). A seq
//!   received twice is a **duplicate**; a seq that fills an earlier hole is **out of order**.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

/// The value recorded for an answer or delivery that never came: one hour, in µs. Also the
/// histogram's upper bound, so no latency of any run is dropped.
pub const CEILING_US: u64 = 3_600_000_000;

/// Latencies in microseconds, 1 µs to one hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, CEILING_US, 3).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, CEILING_US));
}

/// One run's identity and its measured window, in µs since the run's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Tells this run's messages from earlier runs' in reused rooms.
    pub run: u32,
    pub from_us: u64,
    pub to_us: u64,
}

impl Window {
    pub fn contains(&self, t_us: u64) -> bool {
        t_us >= self.from_us && t_us < self.to_us
    }

    pub fn secs(&self) -> f64 {
        self.to_us.saturating_sub(self.from_us) as f64 / 1e6
    }
}

/// What a message body carries: `lg <run> <conn> <intended µs> <padding>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub run: u32,
    /// The sending connection.
    pub conn: usize,
    pub intended_us: u64,
}

impl Mark {
    /// A body of `size` bytes (at least the mark and one byte of padding).
    pub fn body(&self, size: usize) -> String {
        let head = format!("lg {:08x} {} {} ", self.run, self.conn, self.intended_us);
        let pad = size.saturating_sub(head.len()).max(1);
        let mut body = head;
        body.extend(std::iter::repeat_n('x', pad));
        body
    }

    pub fn parse(body: &str) -> Option<Self> {
        let mut parts = body.strip_prefix("lg ")?.splitn(4, ' ');
        Some(Self {
            run: u32::from_str_radix(parts.next()?, 16).ok()?,
            conn: parts.next()?.parse().ok()?,
            intended_us: parts.next()?.parse().ok()?,
        })
    }
}

/// Per room, the seqs one connection received.
#[derive(Debug, Default, Clone)]
pub struct RoomTrack {
    /// Seqs up to here were had before the run (resume point).
    pub start: u64,
    pub last: u64,
    pub missing: BTreeSet<u64>,
    pub duplicates: u64,
    pub out_of_order: u64,
}

impl RoomTrack {
    pub fn starting_at(seq: u64) -> Self {
        Self {
            start: seq,
            last: seq,
            ..Self::default()
        }
    }

    /// Takes a seq; true when it is new to this connection.
    pub fn receive(&mut self, seq: u64) -> bool {
        if seq > self.last {
            self.missing.extend(self.last + 1..seq);
            self.last = seq;
            true
        } else if self.missing.remove(&seq) {
            self.out_of_order += 1;
            true
        } else {
            self.duplicates += 1;
            false
        }
    }

    pub fn has(&self, seq: u64) -> bool {
        seq <= self.last && !self.missing.contains(&seq)
    }

    /// Holes: seqs up to `final_seq` missing although a later seq arrived.
    pub fn lost(&self, final_seq: u64) -> u64 {
        self.missing.range(..=final_seq).count() as u64
    }

    /// Seqs up to `final_seq` after the last one received: not arrived (yet) at the end.
    pub fn behind(&self, final_seq: u64) -> u64 {
        final_seq.saturating_sub(self.last)
    }
}

/// Counts of one connection, or of a whole run once settled.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Sends made (any time) and those intended inside the window.
    pub sent: u64,
    pub sent_in_window: u64,
    /// Acks received, and those that arrived inside the window.
    pub acked: u64,
    pub acked_arrived_in_window: u64,
    /// Sends answered with an error frame.
    pub failed: u64,
    /// Sends never answered: the connection dropped, or the run ended first.
    pub unanswered: u64,
    /// Answers matching no pending send (duplicate or unknown `client_msg_id`).
    pub stray_answers: u64,
    /// Messages of this run received by a connection other than the sender (first copy only).
    pub delivered: u64,
    pub delivered_arrived_in_window: u64,
    /// The sender's own copies.
    pub echoes: u64,
    /// Events of earlier runs, and events that are not messages.
    pub foreign: u64,
    /// Acknowledged messages intended inside the window that some member's connection never
    /// received (one per connection).
    pub undelivered: u64,
    /// Holes in a connection's stream of a room (see the module's rules).
    pub lost: u64,
    /// Seqs a connection had not received when the run ended, after its last one.
    pub behind: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.sent += o.sent;
        self.sent_in_window += o.sent_in_window;
        self.acked += o.acked;
        self.acked_arrived_in_window += o.acked_arrived_in_window;
        self.failed += o.failed;
        self.unanswered += o.unanswered;
        self.stray_answers += o.stray_answers;
        self.delivered += o.delivered;
        self.delivered_arrived_in_window += o.delivered_arrived_in_window;
        self.echoes += o.echoes;
        self.foreign += o.foreign;
        self.undelivered += o.undelivered;
        self.lost += o.lost;
        self.behind += o.behind;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
    }
}

/// Run-wide running totals, read while the run goes on: how many sends and deliveries are
/// outstanding. A backlog that grows over the window means the server does not keep up.
#[derive(Debug, Default)]
pub struct Live {
    pub sent: AtomicU64,
    /// Acked, failed or given up on.
    pub answered: AtomicU64,
    /// Deliveries the sends made so far call for (other connections in the room).
    pub expected_deliveries: AtomicU64,
    pub delivered: AtomicU64,
}

/// Outstanding work at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Backlog {
    /// Sent and not answered yet.
    pub answers: u64,
    /// Called for and not delivered yet.
    pub deliveries: u64,
}

impl Live {
    pub fn backlog(&self) -> Backlog {
        // Read the completions first, so a concurrent completion cannot make it negative.
        let answered = self.answered.load(Ordering::Acquire);
        let delivered = self.delivered.load(Ordering::Acquire);
        Backlog {
            answers: self.sent.load(Ordering::Acquire).saturating_sub(answered),
            deliveries: self
                .expected_deliveries
                .load(Ordering::Acquire)
                .saturating_sub(delivered),
        }
    }
}

/// Width of one slot of the latency timeline (by when sends were intended).
pub const SLOT_US: u64 = 100_000;

/// The latencies (µs) of the sends intended in one slot of the window: where in the run the
/// tail happened (a stall of the server shows as a few slots far above the rest).
#[derive(Debug, Default, Clone)]
pub struct Slot {
    pub ack: Vec<u32>,
    pub delivery: Vec<u32>,
}

/// One connection's observations.
#[derive(Debug)]
pub struct Ledger {
    pub conn: usize,
    window: Window,
    live: Arc<Live>,
    /// Other connections in each room (deliveries a send there calls for).
    recipients: BTreeMap<usize, u64>,
    /// `client_msg_id` → (intended µs, room).
    pending: HashMap<String, (u64, usize)>,
    pub counts: Counts,
    /// Send → answer, for sends intended inside the window.
    pub ack: Histogram<u64>,
    /// Send → delivery, for messages intended inside the window.
    pub delivery: Histogram<u64>,
    /// How late the generator itself made each send (actual − intended).
    pub send_lag: Histogram<u64>,
    pub tracks: BTreeMap<usize, RoomTrack>,
    /// Highest acknowledged seq per room.
    pub acked_seq: BTreeMap<usize, u64>,
    /// (room, seq, intended µs) of acknowledged sends intended inside the window.
    pub measured: Vec<(usize, u64, u64)>,
    /// The ack and delivery latencies above, by slot of the window.
    pub slots: Vec<Slot>,
}

impl Ledger {
    /// `rooms`: (room, the seq this connection already has, other connections in the room)
    /// for each of its rooms.
    pub fn new(
        conn: usize,
        window: Window,
        live: Arc<Live>,
        rooms: impl IntoIterator<Item = (usize, u64, u64)>,
    ) -> Self {
        let rooms: Vec<_> = rooms.into_iter().collect();
        Self {
            conn,
            window,
            live,
            recipients: rooms.iter().map(|&(r, _, n)| (r, n)).collect(),
            pending: HashMap::new(),
            counts: Counts::default(),
            ack: histogram(),
            delivery: histogram(),
            send_lag: histogram(),
            tracks: rooms
                .iter()
                .map(|&(r, seq, _)| (r, RoomTrack::starting_at(seq)))
                .collect(),
            acked_seq: BTreeMap::new(),
            measured: Vec::new(),
            slots: Vec::new(),
        }
    }

    /// The slot of a send intended at `intended_us` (inside the window).
    fn slot(&mut self, intended_us: u64) -> &mut Slot {
        let i = (intended_us.saturating_sub(self.window.from_us) / SLOT_US) as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, Slot::default);
        }
        &mut self.slots[i]
    }

    fn record_ack(&mut self, intended_us: u64, us: u64) {
        record(&mut self.ack, us);
        let us = us.min(CEILING_US) as u32;
        self.slot(intended_us).ack.push(us);
    }

    pub fn window(&self) -> Window {
        self.window
    }

    /// Sets the run and its window (at the start signal, before any send).
    pub fn set_window(&mut self, window: Window) {
        self.window = window;
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// A send went out at `now_us`, intended at `intended_us`.
    pub fn sent(&mut self, key: String, room: usize, intended_us: u64, now_us: u64) {
        self.counts.sent += 1;
        self.live.sent.fetch_add(1, Ordering::Release);
        self.live.expected_deliveries.fetch_add(
            self.recipients.get(&room).copied().unwrap_or(0),
            Ordering::Release,
        );
        if self.window.contains(intended_us) {
            self.counts.sent_in_window += 1;
        }
        self.send_lag
            .saturating_record(now_us.saturating_sub(intended_us).min(CEILING_US));
        self.pending.insert(key, (intended_us, room));
    }

    /// An ack arrived; returns its room when it answered a pending send.
    pub fn acked(&mut self, key: &str, seq: u64, now_us: u64) -> Option<usize> {
        let Some((intended, room)) = self.pending.remove(key) else {
            self.counts.stray_answers += 1;
            return None;
        };
        self.counts.acked += 1;
        self.live.answered.fetch_add(1, Ordering::Release);
        if self.window.contains(now_us) {
            self.counts.acked_arrived_in_window += 1;
        }
        let best = self.acked_seq.entry(room).or_default();
        *best = (*best).max(seq);
        if self.window.contains(intended) {
            self.record_ack(intended, now_us.saturating_sub(intended));
            self.measured.push((room, seq, intended));
        }
        Some(room)
    }

    /// An error frame answered a send: a failure, in the tail.
    pub fn failed(&mut self, key: &str) {
        let Some((intended, _)) = self.pending.remove(key) else {
            self.counts.stray_answers += 1;
            return;
        };
        self.counts.failed += 1;
        self.live.answered.fetch_add(1, Ordering::Release);
        if self.window.contains(intended) {
            self.record_ack(intended, CEILING_US);
        }
    }

    /// A room event arrived; `mark` is parsed from a message body (None for other events).
    pub fn event(&mut self, room: usize, seq: u64, mark: Option<Mark>, now_us: u64) {
        let new = self.tracks.get_mut(&room).is_none_or(|t| t.receive(seq));
        let Some(mark) = mark.filter(|m| m.run == self.window.run) else {
            self.counts.foreign += 1;
            return;
        };
        if !new {
            return;
        }
        if mark.conn == self.conn {
            self.counts.echoes += 1;
            return;
        }
        self.counts.delivered += 1;
        self.live.delivered.fetch_add(1, Ordering::Release);
        if self.window.contains(now_us) {
            self.counts.delivered_arrived_in_window += 1;
        }
        if self.window.contains(mark.intended_us) {
            let us = now_us.saturating_sub(mark.intended_us);
            record(&mut self.delivery, us);
            let slot = self.slot(mark.intended_us);
            slot.delivery.push(us.min(CEILING_US) as u32);
        }
    }

    /// Whatever is in flight will never be answered (the connection dropped, or the run ended).
    pub fn give_up_pending(&mut self) {
        for (_, (intended, _)) in std::mem::take(&mut self.pending) {
            self.counts.unanswered += 1;
            self.live.answered.fetch_add(1, Ordering::Release);
            if self.window.contains(intended) {
                record(&mut self.ack, CEILING_US);
                self.slot(intended).ack.push(CEILING_US as u32);
            }
        }
    }
}

/// A whole run's totals.
#[derive(Debug)]
pub struct Tally {
    pub counts: Counts,
    pub ack: Histogram<u64>,
    pub delivery: Histogram<u64>,
    pub send_lag: Histogram<u64>,
    /// Highest acknowledged seq per room.
    pub final_seq: BTreeMap<usize, u64>,
    /// Every ledger's slots, merged.
    pub slots: Vec<Slot>,
}

/// Merges finished ledgers (pending sends must have been given up on). An acknowledged message
/// intended inside the window that a member's connection (other than the sender's) never
/// received counts as undelivered and is recorded at [`CEILING_US`] in the delivery latency.
pub fn settle(ledgers: &[Ledger]) -> Tally {
    let mut t = Tally {
        counts: Counts::default(),
        ack: histogram(),
        delivery: histogram(),
        send_lag: histogram(),
        final_seq: BTreeMap::new(),
        slots: Vec::new(),
    };
    let mut in_room: BTreeMap<usize, Vec<&Ledger>> = BTreeMap::new();
    for l in ledgers {
        t.counts.add(&l.counts);
        t.ack.add(&l.ack).ok();
        t.delivery.add(&l.delivery).ok();
        t.send_lag.add(&l.send_lag).ok();
        if t.slots.len() < l.slots.len() {
            t.slots.resize_with(l.slots.len(), Slot::default);
        }
        for (all, slot) in t.slots.iter_mut().zip(&l.slots) {
            all.ack.extend_from_slice(&slot.ack);
            all.delivery.extend_from_slice(&slot.delivery);
        }
        for (&room, &seq) in &l.acked_seq {
            let best = t.final_seq.entry(room).or_default();
            *best = (*best).max(seq);
        }
        for &room in l.tracks.keys() {
            in_room.entry(room).or_default().push(l);
        }
    }
    for l in ledgers {
        for (room, track) in &l.tracks {
            let final_seq = t.final_seq.get(room).copied().unwrap_or(0);
            t.counts.lost += track.lost(final_seq);
            t.counts.behind += track.behind(final_seq);
            t.counts.duplicates += track.duplicates;
            t.counts.out_of_order += track.out_of_order;
        }
        for &(room, seq, intended) in &l.measured {
            for other in in_room.get(&room).into_iter().flatten() {
                if other.conn != l.conn && !other.tracks[&room].has(seq) {
                    t.counts.undelivered += 1;
                    record(&mut t.delivery, CEILING_US);
                    let i = (intended.saturating_sub(l.window.from_us) / SLOT_US) as usize;
                    if t.slots.len() <= i {
                        t.slots.resize_with(i + 1, Slot::default);
                    }
                    t.slots[i].delivery.push(CEILING_US as u32);
                }
            }
        }
    }
    t
}
