//! Property tests: the node's sync state machine against a model controller
//! over a channel that loses, duplicates and reorders messages, with the link
//! flapping. Whatever the channel does, every event is stored exactly once
//! and deleted only after it was stored, and a stream's commands run exactly
//! once, in order.

use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;

use super::*;

/// A tiny deterministic generator (the channel's coin flips).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 10_000) as f64 / 10_000.0 < p
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone, Copy)]
struct Faults {
    loss: f64,
    dup: f64,
    max_delay: u64,
    flap: f64,
}

/// Messages in transit, each with the time it arrives.
struct Wire<M> {
    in_transit: Vec<(i64, M)>,
}

impl<M: Clone> Wire<M> {
    fn new() -> Self {
        Wire {
            in_transit: Vec::new(),
        }
    }

    fn send(&mut self, m: M, now: i64, rng: &mut Rng, f: Faults, faulty: bool) {
        if faulty && rng.chance(f.loss) {
            return;
        }
        let copies = if faulty && rng.chance(f.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = if faulty {
                1 + rng.below(f.max_delay)
            } else {
                1
            };
            self.in_transit.push((now + delay as i64, m.clone()));
        }
    }

    fn due(&mut self, now: i64) -> Vec<M> {
        let (due, later): (Vec<_>, Vec<_>) =
            self.in_transit.drain(..).partition(|(t, _)| *t <= now);
        self.in_transit = later;
        due.into_iter().map(|(_, m)| m).collect()
    }

    fn cut(&mut self) {
        self.in_transit.clear();
    }
}

fn faults() -> impl Strategy<Value = Faults> {
    (0.0..0.5f64, 0.0..0.3f64, 1u64..400, 0.0..0.02f64).prop_map(|(loss, dup, max_delay, flap)| {
        Faults {
            loss,
            dup,
            max_delay,
            flap,
        }
    })
}

const STEP: i64 = 10;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_event_is_stored_once_and_deleted_only_after(
        seed in 1u64..u64::MAX,
        n in 1usize..120,
        batch in 1usize..20,
        f in faults(),
    ) {
        let mut rng = Rng(seed);
        let mut sync = Outbox::new(500);
        let mut outbox: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();
        let mut stored: HashSet<String> = HashSet::new();
        let mut inserts = 0usize;
        let mut up: Wire<Vec<String>> = Wire::new();
        let mut down: Wire<Vec<String>> = Wire::new();
        let mut link = true;
        sync.link(true);
        // A faulty phase, then a healthy one long enough to drain.
        let faulty_until = 20_000;
        let mut now = 0;
        while now < 60_000 && !(outbox.is_empty() && up.in_transit.is_empty()) {
            now += STEP;
            let faulty = now < faulty_until;
            if faulty && rng.chance(f.flap) {
                link = !link;
                sync.link(link);
                if !link {
                    up.cut();
                    down.cut();
                }
            } else if !faulty && !link {
                link = true;
                sync.link(true);
            }
            for ids in up.due(now) {
                for id in &ids {
                    if stored.insert(id.clone()) {
                        inserts += 1;
                    }
                }
                // The controller acknowledges after its commit.
                down.send(ids, now, &mut rng, f, faulty);
            }
            for ids in down.due(now) {
                for id in &ids {
                    prop_assert!(stored.contains(id), "{id} deleted before it was stored");
                }
                outbox.retain(|e| !ids.contains(e));
                sync.acked(&ids);
            }
            if let Next::Send = sync.next(now) {
                let ids: Vec<String> = outbox.iter().take(batch).cloned().collect();
                if !ids.is_empty() {
                    up.send(ids.clone(), now, &mut rng, f, faulty);
                    sync.sent(ids, now);
                }
            }
        }
        prop_assert!(outbox.is_empty(), "outbox not drained: {} left", outbox.len());
        prop_assert_eq!(stored.len(), n);
        prop_assert_eq!(inserts, n, "each event stored exactly once");
    }

    #[test]
    fn a_stream_runs_once_and_in_order(
        seed in 1u64..u64::MAX,
        m in 1u64..40,
        f in faults(),
    ) {
        #[derive(Clone, Debug)]
        enum Down { Cmd { id: String, seq: u64 } }
        #[derive(Clone, Debug)]
        enum Up { Ack(String), Resend }
        let mut rng = Rng(seed);
        let mut sync = Streams::new(300);
        // Controller: commands queued one every 50 ms, kept until acked,
        // resent in queue order on request and every second.
        let mut pending: BTreeMap<u64, String> = BTreeMap::new();
        let mut queued = 0u64;
        let mut last_retry = 0i64;
        // Node: executed results by id, last seq run, what ran.
        let mut results: HashMap<String, ()> = HashMap::new();
        let mut last = 0u64;
        let mut ran: Vec<u64> = Vec::new();
        let mut up: Wire<Up> = Wire::new();
        let mut down: Wire<Down> = Wire::new();
        let faulty_until = 20_000;
        let mut now = 0;
        while now < 80_000 && (queued < m || !pending.is_empty()) {
            now += STEP;
            let faulty = now < faulty_until;
            if queued < m && now >= (queued as i64 + 1) * 50 {
                queued += 1;
                let id = format!("c{queued}");
                pending.insert(queued, id.clone());
                down.send(Down::Cmd { id, seq: queued }, now, &mut rng, f, faulty);
            }
            let mut resend = now - last_retry >= 1000;
            for msg in up.due(now) {
                match msg {
                    Up::Ack(id) => pending.retain(|_, v| *v != id),
                    Up::Resend => resend = true,
                }
            }
            if resend {
                last_retry = now;
                for (seq, id) in &pending {
                    down.send(Down::Cmd { id: id.clone(), seq: *seq }, now, &mut rng, f, faulty);
                }
            }
            for Down::Cmd { id, seq } in down.due(now) {
                if results.contains_key(&id) {
                    up.send(Up::Ack(id), now, &mut rng, f, faulty);
                    continue;
                }
                let stream = Stream { key: "conv".into(), seq };
                match sync.admit(Some(&stream), last, now) {
                    Admit::Run => {
                        ran.push(seq);
                        last = seq;
                        results.insert(id.clone(), ());
                        up.send(Up::Ack(id), now, &mut rng, f, faulty);
                    }
                    Admit::Hold { ask } => {
                        if ask {
                            up.send(Up::Resend, now, &mut rng, f, faulty);
                        }
                    }
                    Admit::Superseded => up.send(Up::Ack(id), now, &mut rng, f, faulty),
                }
            }
        }
        prop_assert_eq!(ran, (1..=m).collect::<Vec<_>>());
        prop_assert!(pending.is_empty(), "{} commands never acknowledged", pending.len());
    }
}

#[test]
fn a_dropped_link_resends_what_was_in_flight() {
    let mut s = Outbox::new(1000);
    assert_eq!(s.next(0), Next::WaitForLink);
    s.link(true);
    assert_eq!(s.next(0), Next::Send);
    s.sent(["a".to_owned(), "b".to_owned()], 0);
    assert_eq!(s.next(10), Next::WaitForAcks { deadline: 1000 });
    assert!(!s.acked(&["a".to_owned()]));
    s.link(false);
    assert_eq!(s.next(20), Next::WaitForLink);
    s.link(true);
    assert_eq!(s.next(30), Next::Send, "b goes again after the reconnect");
    assert_eq!(s.resends, 1);
    s.sent(["b".to_owned()], 30);
    assert!(s.acked(&["b".to_owned()]));
    assert_eq!(s.next(40), Next::Send);
    s.sent(["c".to_owned()], 40);
    assert_eq!(s.next(1040), Next::Send, "deadline passed: send again");
    assert_eq!(s.resends, 2);
}

#[test]
fn a_gap_asks_for_a_resend_once_per_interval() {
    let mut s = Streams::new(500);
    let at = |seq| Stream {
        key: "k".into(),
        seq,
    };
    assert_eq!(s.admit(None, 0, 0), Admit::Run);
    assert_eq!(s.admit(Some(&at(1)), 0, 0), Admit::Run);
    assert_eq!(s.admit(Some(&at(3)), 1, 0), Admit::Hold { ask: true });
    assert_eq!(s.admit(Some(&at(4)), 1, 100), Admit::Hold { ask: false });
    assert_eq!(s.admit(Some(&at(4)), 1, 600), Admit::Hold { ask: true });
    assert_eq!(s.admit(Some(&at(1)), 2, 700), Admit::Superseded);
}
