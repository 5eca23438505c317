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
                })
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
        resolution: "visitor left".into(),
        at: 31
    })));
    assert_eq!(desk.live_chats(), 0, "the chat-to-node map is pruned");
}

#[derive(Debug, Clone)]
enum Op {
    Online(u8),
    Offline(u8),
    Escalate(u8, u8),
    Close(u8, u8),
    Ended(u8),
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
        (0u8..3, 0u8..12).prop_map(|(a, c)| Op::Transfer(a, c)),
        (0u16..40).prop_map(Op::Tick),
    ]
}

proptest! {
    #[test]
    fn commands_go_to_the_escalating_node_and_nothing_leaks(ops in proptest::collection::vec(op(), 1..120)) {
        let mut desk = Desk::new(5_000);
        let mut node_of = std::collections::HashMap::new();
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
                    desk.step(In::Escalated { chat, node, lang: "en".into(), at: now }, now)
                }
                Op::Close(a, c) => desk.step(In::Console {
                    agent: agent(&format!("a{a}")),
                    frame: ConsoleIn::Close { chat: format!("c{c}"), resolution: String::new() },
                }, now),
                Op::Ended(c) => desk.step(In::VisitorEnded { chat: format!("c{c}") }, now),
                Op::Transfer(a, c) => desk.step(In::Console {
                    agent: agent(&format!("a{a}")),
                    frame: ConsoleIn::Transfer { chat: format!("c{c}"), to: None },
                }, now),
                Op::Tick(s) => desk.step(In::Tick, now + i64::from(s) * 1_000),
            };
            for d in &todo {
                if let Do::Command { node, chat, body } = d {
                    prop_assert_eq!(Some(node), node_of.get(chat), "command for {} to the wrong node", chat);
                    prop_assert_eq!(body.conversation(), Some(chat.as_str()));
                }
            }
            prop_assert!(desk.live_chats() <= node_of.len());
        }
    }
}
