use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::strategy::Strategy;

use super::Strategy as Plan;
use super::{Action, Input, NodeId, NodeState, Phase, Rollout, ShadowCounts, Size};

fn fleet(n: usize, online: bool) -> BTreeMap<NodeId, (BTreeMap<String, String>, bool)> {
    (0..n)
        .map(|i| {
            let region = if i % 3 == 0 { "apac" } else { "emea" };
            (
                format!("n{i:02}"),
                (
                    BTreeMap::from([("region".to_string(), region.to_string())]),
                    online,
                ),
            )
        })
        .collect()
}

fn strategy(waves: &[Size], bake_ms: i64) -> Plan {
    Plan {
        waves: waves.to_vec(),
        bake_ms,
        failure_threshold: Size::Count(0),
        health_margin: 0.05,
        offline_deadline_ms: 1_000,
        ..Plan::default()
    }
}

fn shadows(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Shadow { node, .. } => Some(node.clone()),
            _ => None,
        })
        .collect()
}

fn counts(turns: u64, agreed: u64, active_us: u64, candidate_us: u64) -> ShadowCounts {
    ShadowCounts {
        turns,
        agreed,
        oos_disagreements: turns - agreed,
        confidence_delta_sum: -0.1 * turns as f64,
        active_us,
        candidate_us,
    }
}

/// A rollout with a 1 s shadow phase over three nodes, one offline at first.
fn shadowed() -> Rollout {
    let mut s = strategy(&[Size::Count(1), Size::Percent(100.0)], 100);
    s.shadow_ms = 1_000;
    let mut f = fleet(3, true);
    f.get_mut("n02").unwrap().1 = false;
    let (mut r, a) = Rollout::new(s, &BTreeMap::new(), &f, 0);
    assert_eq!(r.phase.name(), "shadow");
    assert_eq!(
        shadows(&a),
        vec!["n00", "n01"],
        "online targets run the candidate"
    );
    assert!(
        updates(&a).is_empty(),
        "nobody is updated during the shadow phase"
    );
    r.step(Input::Online {
        node: "n02".into(),
        online: true,
    });
    let a = r.step(Input::Tick { now: 500 });
    assert_eq!(
        shadows(&a),
        vec!["n02"],
        "a node that comes online joins the shadow"
    );
    assert!(
        shadows(&r.step(Input::Tick { now: 600 })).is_empty(),
        "told once"
    );
    r
}

#[test]
fn a_candidate_that_agrees_passes_the_shadow_gate_then_rolls_out() {
    let mut r = shadowed();
    for n in ["n00", "n01"] {
        r.step(Input::Shadow {
            node: n.into(),
            counts: counts(40, 39, 8_000, 9_000),
        });
    }
    let a = r.step(Input::Tick { now: 1_000 });
    assert_eq!(
        updates(&a),
        vec!["n00"],
        "the canary starts once the gate passes"
    );
    let detail = a.iter().find_map(|x| match x {
        Action::Phase { phase, detail } if phase == "rolling" => Some(detail.clone()),
        _ => None,
    });
    assert!(detail.unwrap().contains("agreement 97.5 % over 80 turns"));
}

#[test]
fn an_abort_in_the_shadow_phase_stops_the_candidates_at_once() {
    let mut r = shadowed();
    let a = r.step(Input::Abort {
        reason: "operator".into(),
    });
    let ended: Vec<String> = a
        .iter()
        .filter_map(|x| match x {
            Action::EndShadow { node } => Some(node.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ended, vec!["n00", "n01", "n02"]);
    assert!(updates(&a).is_empty());
    assert!(matches!(r.phase, Phase::Aborted { .. }), "{:?}", r.phase);
}

#[test]
fn the_shadow_gate_refuses_disagreement_too_few_turns_and_slowness() {
    let cases = [
        (
            counts(40, 10, 8_000, 8_000),
            "agreed with the active model on 25.0 % of 80 turns",
        ),
        (
            counts(5, 5, 1_000, 1_000),
            "10 turns compared, fewer than the 20",
        ),
        (
            counts(40, 40, 8_000, 16_000),
            "400 µs a turn against 200 µs",
        ),
    ];
    for (c, want) in cases {
        let mut r = shadowed();
        for n in ["n00", "n01"] {
            r.step(Input::Shadow {
                node: n.into(),
                counts: c,
            });
        }
        let a = r.step(Input::Tick { now: 1_000 });
        assert!(updates(&a).is_empty(), "{want}: nobody is updated");
        match &r.phase {
            Phase::Aborted { reason } => assert!(reason.contains(want), "{reason}"),
            other => panic!("{want}: {other:?}"),
        }
        assert!(
            r.nodes
                .values()
                .all(|e| matches!(e.state, NodeState::Skipped { .. }))
        );
        assert!(updates(&r.step(Input::Tick { now: 5_000 })).is_empty());
    }
}

fn updates(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Update { node } => Some(node.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn sizes_parse_and_round_up() {
    assert_eq!(Size::parse("10%").unwrap(), Size::Percent(10.0));
    assert_eq!(Size::parse("3").unwrap(), Size::Count(3));
    assert!(Size::parse("0").is_err());
    assert!(Size::parse("150%").is_err());
    assert!(Size::parse("ten").is_err());
    assert_eq!(Size::Percent(10.0).of(20), 2);
    assert_eq!(Size::Percent(10.0).of(5), 1, "rounded up, never 0");
    assert_eq!(Size::Count(50).of(20), 20);
}

#[test]
fn waves_then_success() {
    let s = strategy(
        &[Size::Count(1), Size::Percent(50.0), Size::Percent(100.0)],
        100,
    );
    let (mut r, a) = Rollout::new(s, &BTreeMap::new(), &fleet(10, true), 0);
    assert_eq!(updates(&a), vec!["n00"], "one canary");
    r.step(Input::Updated {
        node: "n00".into(),
        now: 5,
    });
    assert_eq!(r.phase.name(), "baking");
    assert!(
        updates(&r.step(Input::Tick { now: 50 })).is_empty(),
        "baking"
    );
    let a = r.step(Input::Tick { now: 105 });
    assert_eq!(updates(&a).len(), 4, "50% of 10 = 5 in total");
    for n in updates(&a) {
        r.step(Input::Updated { node: n, now: 110 });
    }
    r.step(Input::Tick { now: 300 });
    let rest: Vec<String> = r
        .nodes
        .iter()
        .filter(|(_, e)| matches!(e.state, NodeState::Updating { .. }))
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(rest.len(), 5);
    for n in rest {
        r.step(Input::Updated { node: n, now: 310 });
    }
    r.step(Input::Tick { now: 500 });
    assert_eq!(r.phase, Phase::Succeeded);
    assert_eq!(r.updated(), 10);
}

#[test]
fn a_failed_canary_aborts_and_nothing_else_starts() {
    let s = strategy(&[Size::Count(1), Size::Percent(100.0)], 100);
    let (mut r, _) = Rollout::new(s, &BTreeMap::new(), &fleet(5, true), 0);
    let a = r.step(Input::UpdateFailed {
        node: "n00".into(),
        reason: "golden set: 3 of 40 wrong".into(),
    });
    assert!(matches!(r.phase, Phase::Aborted { .. }), "{:?}", r.phase);
    assert!(updates(&a).is_empty());
    assert_eq!(r.started, 1);
}

#[test]
fn the_health_gate_rolls_updated_nodes_back() {
    let s = strategy(&[Size::Count(2), Size::Percent(100.0)], 1_000);
    let (mut r, _) = Rollout::new(s, &BTreeMap::new(), &fleet(6, true), 0);
    let mut a = Vec::new();
    for n in ["n00", "n01"] {
        r.step(Input::Health {
            node: n.into(),
            baseline: 0.10,
            current: 0.30,
        });
        a.extend(r.step(Input::Updated {
            node: n.into(),
            now: 1,
        }));
    }
    a.extend(r.step(Input::Tick { now: 10 }));
    let back: Vec<&Action> = a
        .iter()
        .filter(|a| matches!(a, Action::Rollback { .. }))
        .collect();
    assert_eq!(back.len(), 2);
    assert!(matches!(r.phase, Phase::Aborting { ref reason } if reason.contains("health gate")));
    r.step(Input::RolledBack { node: "n00".into() });
    r.step(Input::RollbackFailed {
        node: "n01".into(),
        reason: "disk full".into(),
    });
    assert!(matches!(r.phase, Phase::Aborted { .. }));
    assert_eq!(r.failed(), 1);
}

#[test]
fn offline_nodes_wait_for_the_deadline_then_are_skipped() {
    let mut f = fleet(3, true);
    f.get_mut("n01").unwrap().1 = false;
    let s = strategy(&[Size::Percent(100.0)], 0);
    let (mut r, a) = Rollout::new(s, &BTreeMap::new(), &f, 0);
    assert_eq!(updates(&a), vec!["n00", "n02"]);
    r.step(Input::Updated {
        node: "n00".into(),
        now: 1,
    });
    r.step(Input::Updated {
        node: "n02".into(),
        now: 1,
    });
    r.step(Input::Tick { now: 500 });
    assert_eq!(r.phase.name(), "rolling", "still waiting for n01");
    r.step(Input::Tick { now: 1_000 });
    assert!(matches!(r.nodes["n01"].state, NodeState::Skipped { .. }));
    assert_eq!(r.phase, Phase::Succeeded);
}

#[test]
fn pause_holds_and_resume_continues() {
    let s = strategy(&[Size::Count(1), Size::Percent(100.0)], 0);
    let (mut r, _) = Rollout::new(s, &BTreeMap::new(), &fleet(4, true), 0);
    r.step(Input::Pause);
    r.step(Input::Updated {
        node: "n00".into(),
        now: 1,
    });
    assert!(updates(&r.step(Input::Tick { now: 10 })).is_empty());
    assert_eq!(r.phase, Phase::Paused { wave: 0 });
    let a = r.step(Input::Resume { now: 20 });
    assert_eq!(updates(&a).len(), 3);
}

#[test]
fn the_selector_picks_by_labels_and_survives_a_restart() {
    let sel = BTreeMap::from([("region".to_string(), "apac".to_string())]);
    let s = strategy(&[Size::Percent(100.0)], 0);
    let (r, a) = Rollout::new(s, &sel, &fleet(9, true), 0);
    assert_eq!(updates(&a), vec!["n00", "n03", "n06"]);
    let saved = serde_json::to_string(&r).unwrap();
    let back: Rollout = serde_json::from_str(&saved).unwrap();
    assert_eq!(back, r, "the whole state round-trips through the store");
}

#[derive(Debug, Clone)]
enum Op {
    Tick(i64),
    Online(usize, bool),
    Updated(usize),
    Failed(usize),
    RolledBack(usize),
    RollbackFailed(usize),
    Health(usize, u8),
    Pause,
    Resume,
    Abort,
    Shadow(usize, u8),
}

fn op() -> impl Strategy<Value = Op> {
    let node = 0usize..16;
    prop_oneof![
        4 => (1i64..500).prop_map(Op::Tick),
        1 => (node.clone(), any::<bool>()).prop_map(|(n, o)| Op::Online(n, o)),
        4 => node.clone().prop_map(Op::Updated),
        1 => node.clone().prop_map(Op::Failed),
        2 => node.clone().prop_map(Op::RolledBack),
        1 => node.clone().prop_map(Op::RollbackFailed),
        1 => (node.clone(), 0u8..100).prop_map(|(n, r)| Op::Health(n, r)),
        1 => Just(Op::Pause),
        1 => Just(Op::Resume),
        1 => Just(Op::Abort),
        2 => (node.clone(), 0u8..=100).prop_map(|(n, a)| Op::Shadow(n, a)),
    ]
}

fn wave_sizes() -> impl Strategy<Value = Vec<Size>> {
    prop::collection::vec(
        prop_oneof![
            (1u32..6).prop_map(Size::Count),
            (1u32..=100).prop_map(|p| Size::Percent(p as f64)),
        ],
        1..5,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn invariants_hold_under_any_inputs(
        waves in wave_sizes(),
        threshold in 0u32..3,
        total in 1usize..14,
        offline in prop::collection::btree_set(0usize..16, 0..4),
        ops in prop::collection::vec(op(), 0..120),
        shadow_ms in prop_oneof![Just(0i64), 1i64..600],
    ) {
        let mut f = fleet(total, true);
        for e in f.values_mut() {
            e.0.insert("kind".into(), "bank".into());
        }
        // Two nodes outside the selector.
        f.insert("x-outside-1".into(), (BTreeMap::from([("kind".into(), "retail".into())]), true));
        f.insert("x-outside-2".into(), (BTreeMap::new(), true));
        for i in &offline {
            if let Some(e) = f.get_mut(&format!("n{i:02}")) { e.1 = false; }
        }
        let mut s = strategy(&waves, 50);
        s.failure_threshold = Size::Count(threshold);
        s.shadow_ms = shadow_ms;
        let sel = BTreeMap::from([("kind".to_string(), "bank".to_string())]);
        let (mut r, first) = Rollout::new(s, &sel, &f, 0);
        let targets: BTreeSet<String> = r.order.iter().cloned().collect();
        prop_assert_eq!(targets.len(), total);
        prop_assert!(!targets.iter().any(|t| t.starts_with("x-")));
        let mut told: BTreeSet<String> = updates(&first).into_iter().collect();
        let mut ever_updated: BTreeSet<String> = BTreeSet::new();
        let mut now = 0i64;
        let mut max_wave = 0usize;
        for o in ops {
            let node = |i: usize| format!("n{:02}", i % 16);
            let input = match o {
                Op::Tick(d) => { now += d; Input::Tick { now } }
                Op::Online(i, on) => Input::Online { node: node(i), online: on },
                Op::Updated(i) => Input::Updated { node: node(i), now },
                Op::Failed(i) => Input::UpdateFailed { node: node(i), reason: "x".into() },
                Op::RolledBack(i) => Input::RolledBack { node: node(i) },
                Op::RollbackFailed(i) => Input::RollbackFailed { node: node(i), reason: "x".into() },
                Op::Health(i, rate) => Input::Health { node: node(i), baseline: 0.1, current: rate as f64 / 100.0 },
                Op::Pause => Input::Pause,
                Op::Resume => Input::Resume { now },
                Op::Abort => Input::Abort { reason: "operator".into() },
                Op::Shadow(i, agreed) => Input::Shadow {
                    node: node(i),
                    counts: counts(100, agreed as u64, 1_000, 1_000),
                },
            };
            // Only nodes that were told to update can report having done so.
            let input = match input {
                Input::Updated { ref node, .. } | Input::UpdateFailed { ref node, .. }
                    if !told.contains(node) => Input::Tick { now },
                other => other,
            };
            if let Input::Updated { node, .. } = &input {
                if matches!(r.nodes.get(node).map(|e| &e.state), Some(NodeState::Updating { .. })) {
                    ever_updated.insert(node.clone());
                }
            }
            let was_shadow = matches!(r.phase, Phase::Shadow { .. });
            let actions = r.step(input);
            if was_shadow && !matches!(r.phase, Phase::Shadow { .. }) {
                // The gate decided: on to the waves only if the counts pass.
                let passed = !matches!(r.phase, Phase::Aborting { .. } | Phase::Aborted { .. });
                let operator_abort = matches!(&r.phase, Phase::Aborting { reason } | Phase::Aborted { reason } if reason == "operator");
                if !operator_abort {
                    prop_assert_eq!(passed, r.shadow_verdict().is_ok(), "{:?}", r.phase);
                }
            }
            if was_shadow && !updates(&actions).is_empty() {
                prop_assert!(r.shadow_verdict().is_ok(), "updated before the shadow gate passed");
            }
            for a in &actions {
                match a {
                    Action::Update { node } => {
                        prop_assert!(targets.contains(node), "updated a node outside the selector: {node}");
                        prop_assert!(told.insert(node.clone()), "told {node} to update twice");
                    }
                    Action::Rollback { node } => prop_assert!(targets.contains(node)),
                    Action::Shadow { node, .. } => {
                        prop_assert!(targets.contains(node));
                        prop_assert!(told.is_empty(), "shadow after an update started");
                    }
                    Action::EndShadow { node } => prop_assert!(targets.contains(node)),
                    Action::Phase { .. } => {}
                }
            }
            if let Phase::Rolling { wave, .. } | Phase::Baking { wave, .. } | Phase::Paused { wave } = r.phase {
                max_wave = max_wave.max(wave);
            }
            prop_assert!(r.started <= r.wave_size(max_wave),
                "{} started, wave {} allows {}", r.started, max_wave, r.wave_size(max_wave));
            prop_assert_eq!(r.started, told.len());
        }
        // An abort always ends with every updated node back or reported failed
        // once the nodes answer the rollbacks.
        r.step(Input::Abort { reason: "end of test".into() });
        let back: Vec<String> = r.nodes.iter()
            .filter(|(_, e)| e.state == NodeState::RollingBack)
            .map(|(n, _)| n.clone())
            .collect();
        for n in back {
            r.step(Input::RolledBack { node: n });
        }
        if !matches!(r.phase, Phase::Succeeded) {
            prop_assert!(matches!(r.phase, Phase::Aborted { .. }), "{:?}", r.phase);
            for n in &ever_updated {
                let s = &r.nodes[n].state;
                prop_assert!(matches!(s, NodeState::RolledBack | NodeState::Failed { .. }),
                    "{n} updated, then abort left it {s:?}");
            }
        }
    }
}

#[test]
fn shadow_settings_out_of_range_are_refused_by_name() {
    for (s, want) in [
        (
            Plan {
                shadow_ms: -1,
                ..Plan::default()
            },
            "shadow phase cannot be negative",
        ),
        (
            Plan {
                shadow_min_agreement: 1.5,
                ..Plan::default()
            },
            "minimum agreement",
        ),
        (
            Plan {
                shadow_min_agreement: -0.1,
                ..Plan::default()
            },
            "minimum agreement",
        ),
        (
            Plan {
                shadow_latency_margin: -1.0,
                ..Plan::default()
            },
            "latency margin",
        ),
    ] {
        let e = s.validate().expect_err(want);
        assert!(e.contains(want), "{e}");
    }
    assert!(
        Plan {
            shadow_ms: 60_000,
            ..Plan::default()
        }
        .validate()
        .is_ok()
    );
}
