//! The desk's decisions, checked without any I/O.

use proptest::prelude::*;

use super::*;
use crate::store::Role;

fn agent(id: &str) -> AgentRow {
    AgentRow {
        id: id.into(),
        username: id.into(),
        display_name: format!("Agent {id}"),
        role: Role::Agent,
        languages: vec!["en".into()],
        capacity: 2,
        disabled: false,
        created_at: 0,
    }
}

fn online(desk: &mut Desk, id: &str) -> Vec<Do> {
    let mut out = desk.step(In::Connected { agent: agent(id) }, 1);
    out.extend(desk.step(
        In::Console {
            agent: agent(id),
            frame: ConsoleIn::Presence {
                state: "online".into(),
            },
        },
        1,
    ));
    out
}

fn escalate(desk: &mut Desk, chat: &str, node: &str) -> Vec<Do> {
    desk.step(
        In::Escalated {
            chat: chat.into(),
            node: node.into(),
            lang: "en".into(),
            at: 5,
        },
        10,
    )
}

/// Issue 11, finding 8: scripted escalations from one branch cannot fill
/// the queue; other branches still queue, and a known chat escalating again
/// is not refused.
#[test]
fn one_branchs_share_of_the_queue_is_bounded() {
    let mut desk = Desk::new(30_000).with_max_waiting_per_node(2);
    assert!(
        escalate(&mut desk, "c1", "branch-7")
            .iter()
            .all(|d| !matches!(d, Do::Store(ChatWrite::Close { .. })))
    );
    escalate(&mut desk, "c2", "branch-7");
    assert_eq!(
        escalate(&mut desk, "c3", "branch-7"),
        vec![Do::Store(ChatWrite::Close {
            chat: "c3".into(),
            resolution: QUEUE_FULL.into(),
            at: 10
        })]
    );
    assert!(
        !escalate(&mut desk, "c2", "branch-7")
            .iter()
            .any(|d| matches!(d, Do::Store(ChatWrite::Close { .. }))),
        "a chat already queued escalating again is not refused"
    );
    escalate(&mut desk, "c4", "branch-8");
    assert!(
        desk.router.chat("c4").is_some(),
        "another branch still queues"
    );
    assert!(desk.router.chat("c3").is_none());
    // When an agent takes one, the branch has room again.
    online(&mut desk, "a1");
    assert!(desk.router.chat("c1").is_some_and(|c| c.agent.is_some()));
    escalate(&mut desk, "c5", "branch-7");
    assert!(desk.router.chat("c5").is_some());
}

#[test]
fn an_escalation_is_assigned_with_one_step_of_decisions() {
    let mut desk = Desk::new(30_000);
    online(&mut desk, "a1");
    let todo = escalate(&mut desk, "c1", "branch-7");
    assert_eq!(
        todo,
        vec![
            Do::Store(ChatWrite::Assign {
                chat: "c1".into(),
                agent: "a1".into(),
                at: 10
            }),
            Do::Command {
                node: "branch-7".into(),
                chat: "c1".into(),
                body: CommandBody::AgentJoined(AgentJoined {
                    conversation: "c1".into(),
                    agent_name: "Agent a1".into()
                }),
                id: None,
            },
            Do::PushAssigned {
                agent: "a1".into(),
                chat: "c1".into()
            },
        ]
    );
}

#[test]
fn only_the_holder_may_write_and_lines_go_to_the_chats_node() {
    let mut desk = Desk::new(30_000);
    online(&mut desk, "a1");
    online(&mut desk, "a2");
    escalate(&mut desk, "c1", "n1");
    let holder = desk.holder("c1").unwrap().to_owned();
    let other = if holder == "a1" { "a2" } else { "a1" };
    let msg = |who: &str| In::Console {
        agent: agent(who),
        frame: ConsoleIn::Message {
            chat: "c1".into(),
            text: " hello ".into(),
            client_id: None,
        },
    };
    assert_eq!(
        desk.step(msg(other), 20),
        vec![Do::Reply(Err("that chat is not assigned to you".into()))]
    );
    let todo = desk.step(msg(&holder), 20);
    assert!(matches!(&todo[0], Do::Store(ChatWrite::AgentLine { text, .. }) if text == "hello"));
    assert!(
        matches!(&todo[1], Do::Command { node, body: CommandBody::AgentMessage(m), .. } if node == "n1" && m.text == "hello")
    );
    assert_eq!(todo.last(), Some(&Do::Reply(Ok(()))));
    let empty = In::Console {
        agent: agent(&holder),
        frame: ConsoleIn::Message {
            chat: "c1".into(),
            text: "   ".into(),
            client_id: None,
        },
    };
    assert!(matches!(
        desk.step(empty, 21).last(),
        Some(Do::Reply(Err(_)))
    ));
}

#[test]
fn closed_and_abandoned_chats_are_forgotten() {
    let mut desk = Desk::new(30_000);
    online(&mut desk, "a1");
    escalate(&mut desk, "c1", "n1");
    escalate(&mut desk, "c2", "n1");
    assert_eq!(desk.live_chats(), 2);
    let close = In::Console {
        agent: agent("a1"),
        frame: ConsoleIn::Close {
            chat: "c1".into(),
            resolution: "done".into(),
        },
    };
    let todo = desk.step(close, 30);
    assert!(todo.iter().any(|d| matches!(
        d,
        Do::Command {
            body: CommandBody::AgentClosed(_),
            ..
        }
    )));
    let todo = desk.step(In::VisitorEnded { chat: "c2".into() }, 31);
    assert!(todo.contains(&Do::Store(ChatWrite::Close {
        chat: "c2".into(),
        resolution: "visitor ended the chat".into(),
        at: 31
    })));
    assert_eq!(desk.live_chats(), 0, "the chat-to-node map is pruned");
}

fn joined(todo: &[Do]) -> Vec<(String, String)> {
    todo.iter()
        .filter_map(|d| match d {
            Do::Store(ChatWrite::Assign { chat, agent, .. }) => Some((chat.clone(), agent.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_waiting_chat_that_ended_or_was_withdrawn_is_never_handed_out() {
    let mut desk = Desk::new(30_000);
    escalate(&mut desk, "ended", "n1");
    escalate(&mut desk, "left", "n1");
    escalate(&mut desk, "message", "n1");
    desk.step(
        In::VisitorEnded {
            chat: "ended".into(),
        },
        11,
    );
    desk.step(
        In::Withdrawn {
            chat: "left".into(),
            reason: "visitor left".into(),
        },
        12,
    );
    desk.step(
        In::Withdrawn {
            chat: "message".into(),
            reason: "left a message".into(),
        },
        13,
    );
    assert_eq!(desk.live_chats(), 0);
    assert_eq!(desk.snapshot(14).waiting, 0);
    assert!(
        joined(&online(&mut desk, "a1")).is_empty(),
        "nothing to hand out"
    );
}

#[test]
fn a_withdrawal_that_crossed_an_assignment_closes_the_chat_for_the_agent() {
    let mut desk = Desk::new(30_000);
    online(&mut desk, "a1");
    escalate(&mut desk, "c1", "n1");
    let todo = desk.step(
        In::Withdrawn {
            chat: "c1".into(),
            reason: "visitor left".into(),
        },
        20,
    );
    assert!(todo.iter().any(|d| matches!(
        d,
        Do::Command { body: CommandBody::AgentClosed(_), node, .. } if node == "n1"
    )));
    assert!(todo.contains(&Do::Push {
        agent: "a1".into(),
        frame: ConsoleOut::Closed {
            chat: "c1".into(),
            reason: Some("visitor left".into())
        }
    }));
    assert!(desk.holder("c1").is_none());
}

#[test]
fn the_agent_sees_the_visitor_leave_and_come_back_and_parked_chats_wait() {
    let mut desk = Desk::new(30_000);
    online(&mut desk, "a1");
    escalate(&mut desk, "c1", "n1");
    let gone = desk.step(
        In::VisitorPresence {
            chat: "c1".into(),
            present: false,
        },
        20,
    );
    assert!(gone.contains(&Do::Push {
        agent: "a1".into(),
        frame: ConsoleOut::Visitor {
            chat: "c1".into(),
            present: false
        }
    }));
    // A waiting visitor who left is parked: not counted, not handed out.
    escalate(&mut desk, "c2", "n1");
    escalate(&mut desk, "c3", "n1");
    desk.step(
        In::VisitorPresence {
            chat: "c3".into(),
            present: false,
        },
        21,
    );
    let snap = desk.snapshot(22);
    assert_eq!(
        (snap.waiting, snap.waiting_away),
        (0, 1),
        "c2 went to a1 (capacity 2)"
    );
}

#[test]
fn waiting_visitors_are_told_their_place_when_it_changes() {
    let mut desk = Desk::new(30_000);
    let places = |todo: &[Do]| -> Vec<(String, u32, u32)> {
        todo.iter()
            .filter_map(|d| match d {
                Do::QueueStatus {
                    chat,
                    position,
                    agents_online,
                    ..
                } => Some((chat.clone(), *position, *agents_online)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        places(&escalate(&mut desk, "c1", "n1")),
        vec![("c1".into(), 1, 0)]
    );
    assert_eq!(
        places(&escalate(&mut desk, "c2", "n1")),
        vec![("c2".into(), 2, 0)],
        "c1's place did not change: not told again"
    );
    assert!(places(&desk.step(In::Tick, 20)).is_empty());
    desk.step(In::VisitorEnded { chat: "c1".into() }, 21);
    assert_eq!(places(&desk.step(In::Tick, 22)), vec![("c2".into(), 1, 0)]);
}

#[test]
fn a_line_sent_again_with_its_console_id_keeps_its_keys() {
    let mut desk = Desk::new(30_000);
    online(&mut desk, "a1");
    escalate(&mut desk, "c1", "n1");
    let send = |id: &str| In::Console {
        agent: agent("a1"),
        frame: ConsoleIn::Message {
            chat: "c1".into(),
            text: "hello".into(),
            client_id: Some(id.into()),
        },
    };
    let keys = |todo: &[Do]| -> (String, Option<String>) {
        let key = todo
            .iter()
            .find_map(|d| match d {
                Do::Store(ChatWrite::AgentLine { key, .. }) => Some(key.clone()),
                _ => None,
            })
            .unwrap();
        let id = todo
            .iter()
            .find_map(|d| match d {
                Do::Command { id, .. } => Some(id.clone()),
                _ => None,
            })
            .unwrap();
        (key, id)
    };
    let first = keys(&desk.step(send("l-1"), 20));
    assert!(first.1.is_some());
    assert_eq!(
        keys(&desk.step(send("l-1"), 25)),
        first,
        "same line: same keys"
    );
    assert_ne!(keys(&desk.step(send("l-2"), 26)), first);
    assert_eq!(
        desk.step(send("<script>"), 27).last(),
        Some(&Do::Reply(Err(
            "client_id must be 1 to 64 of A-Z a-z 0-9 _ -".into()
        )))
    );
}

#[test]
fn after_a_restart_held_chats_return_to_their_agent_and_waiting_ones_wait() {
    use crate::store::LiveChat;
    let mut desk = Desk::new(30_000);
    let chat = |id: &str, holder: Option<&str>| LiveChat {
        id: id.into(),
        node_id: "n1".into(),
        lang: "en".into(),
        queued_at: 1,
        visitor_present: true,
        agent: holder.map(agent),
    };
    let todo = desk.step(
        In::Restore {
            chats: vec![chat("held", Some("a1")), chat("waiting", None)],
        },
        100,
    );
    assert!(joined(&todo).is_empty(), "nobody is connected yet");
    assert_eq!(desk.holder("held"), Some("a1"));
    assert_eq!(desk.snapshot(101).waiting, 1, "the dashboard counts it");
    // The agent's console comes back: their chat is pushed again, and the
    // waiting one is handed out once they are online.
    let todo = online(&mut desk, "a1");
    assert!(todo.contains(&Do::PushAssigned {
        agent: "a1".into(),
        chat: "held".into()
    }));
    assert_eq!(joined(&todo), vec![("waiting".into(), "a1".into())]);
    let line = desk.step(
        In::Console {
            agent: agent("a1"),
            frame: ConsoleIn::Message {
                chat: "held".into(),
                text: "still here".into(),
                client_id: None,
            },
        },
        102,
    );
    assert_eq!(
        line.last(),
        Some(&Do::Reply(Ok(()))),
        "the agent may write again"
    );
    // Restored again (relays from standbys may have been lost): what the
    // desk knows stays as it is (held once, by the same agent), what it
    // missed is added to the queue (the agent is full).
    assert_eq!(desk.snapshot(103).waiting, 0);
    let todo = desk.step(
        In::Restore {
            chats: vec![chat("held", Some("a1")), chat("missed", None)],
        },
        104,
    );
    assert!(joined(&todo).is_empty(), "{todo:?}");
    assert_eq!(desk.holder("held"), Some("a1"));
    assert_eq!(desk.holder("missed"), None);
    assert_eq!(desk.snapshot(105).waiting, 1, "only the missed chat waits");
}

#[derive(Debug, Clone)]
enum Op {
    Online(u8),
    Offline(u8),
    Escalate(u8, u8),
    Close(u8, u8),
    Ended(u8),
    Withdrawn(u8),
    Away(u8, bool),
    Transfer(u8, u8),
    Tick(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3).prop_map(Op::Online),
        (0u8..3).prop_map(Op::Offline),
        (0u8..12, 0u8..3).prop_map(|(c, n)| Op::Escalate(c, n)),
        (0u8..3, 0u8..12).prop_map(|(a, c)| Op::Close(a, c)),
        (0u8..12).prop_map(Op::Ended),
        (0u8..12).prop_map(Op::Withdrawn),
        (0u8..12, any::<bool>()).prop_map(|(c, p)| Op::Away(c, p)),
        (0u8..3, 0u8..12).prop_map(|(a, c)| Op::Transfer(a, c)),
        (0u16..40).prop_map(Op::Tick),
    ]
}

proptest! {
    #[test]
    fn commands_go_to_the_escalating_node_and_nothing_leaks(ops in proptest::collection::vec(op(), 1..120)) {
        let mut desk = Desk::new(5_000);
        let mut node_of = std::collections::HashMap::new();
        // Chats the visitor ended or withdrew (until escalated again).
        let mut over = std::collections::HashSet::new();
        let mut now = 100;
        for o in ops {
            now += 1_000;
            let todo = match o {
                Op::Online(a) => online(&mut desk, &format!("a{a}")),
                Op::Offline(a) => desk.step(In::Console {
                    agent: agent(&format!("a{a}")),
                    frame: ConsoleIn::Presence { state: "offline".into() },
                }, now),
                Op::Escalate(c, n) => {
                    let chat = format!("c{c}");
                    // A conversation belongs to one node for its life.
                    let node = node_of.entry(chat.clone()).or_insert(format!("n{n}")).clone();
                    over.remove(&chat);
                    desk.step(In::Escalated { chat, node, lang: "en".into(), at: now }, now)
                }
                Op::Close(a, c) => desk.step(In::Console {
                    agent: agent(&format!("a{a}")),
                    frame: ConsoleIn::Close { chat: format!("c{c}"), resolution: String::new() },
                }, now),
                Op::Ended(c) => {
                    over.insert(format!("c{c}"));
                    desk.step(In::VisitorEnded { chat: format!("c{c}") }, now)
                }
                Op::Withdrawn(c) => {
                    over.insert(format!("c{c}"));
                    desk.step(In::Withdrawn { chat: format!("c{c}"), reason: "left".into() }, now)
                }
                Op::Away(c, present) => desk.step(In::VisitorPresence { chat: format!("c{c}"), present }, now),
                Op::Transfer(a, c) => desk.step(In::Console {
                    agent: agent(&format!("a{a}")),
                    frame: ConsoleIn::Transfer { chat: format!("c{c}"), to: None },
                }, now),
                Op::Tick(s) => desk.step(In::Tick, now + i64::from(s) * 1_000),
            };
            for d in &todo {
                if let Do::Command { node, chat, body, .. } = d {
                    prop_assert_eq!(Some(node), node_of.get(chat), "command for {} to the wrong node", chat);
                    prop_assert_eq!(body.conversation(), Some(chat.as_str()));
                    prop_assert!(
                        !(over.contains(chat) && matches!(body, CommandBody::AgentJoined(_))),
                        "an agent joined {} after its visitor was gone", chat
                    );
                }
            }
            prop_assert!(desk.live_chats() <= node_of.len());
        }
    }
}

#[test]
fn typing_counts_only_from_the_chats_own_node() {
    let mut desk = Desk::new(30_000);
    online(&mut desk, "a1");
    escalate(&mut desk, "c1", "branch-7");
    let typing = |node: &str| In::VisitorTyping {
        chat: "c1".into(),
        node: node.into(),
    };
    assert!(
        desk.step(typing("branch-8"), 20).is_empty(),
        "another node is ignored"
    );
    assert_eq!(
        desk.step(typing("branch-7"), 21),
        vec![Do::Push {
            agent: "a1".into(),
            frame: ConsoleOut::Typing { chat: "c1".into() },
        }]
    );
}
