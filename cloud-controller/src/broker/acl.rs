//! The embedded broker's per-node rules, as pure functions of MQTT 3.1.1
//! packets (rumqttd has no ACL hook, so the [`super::gate`] in front of it
//! applies these): a node publishes only to its own `up` topic, subscribes
//! only to its own `down` topic, and its last will goes to its own `up`
//! topic. The controller's own login is not accepted through the gate.

use edgedesk_common::envelope::topic;
use edgedesk_support::logging::clip;

/// MQTT control packet types used here (the high nibble of the first byte).
pub const CONNECT: u8 = 1;
pub const PUBLISH: u8 = 3;
pub const SUBSCRIBE: u8 = 8;

/// A packet, as far as the rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect {
        client_id: String,
        user: Option<String>,
        password: Option<String>,
        will_topic: Option<String>,
    },
    Publish {
        topic: String,
    },
    Subscribe {
        filters: Vec<String>,
    },
    /// Anything else (acks, pings, unsubscribe, disconnect): allowed.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    #[error("malformed {0} packet")]
    Malformed(&'static str),
    #[error("first packet is not CONNECT")]
    NotConnect,
    #[error("{0}")]
    Denied(String),
}

/// Split a remaining-length varint off `buf`: `Some((length, bytes used))`,
/// `None` while incomplete; an error past four bytes.
pub fn remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, AclError> {
    let mut len = 0usize;
    for (i, b) in buf.iter().enumerate().take(4) {
        len |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((len, i + 1)));
        }
    }
    if buf.len() >= 4 {
        return Err(AclError::Malformed("length"));
    }
    Ok(None)
}

struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], AclError> {
        if self.buf.len() < n {
            return Err(AclError::Malformed(self.what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, AclError> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, AclError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn binary(&mut self) -> Result<&'a [u8], AclError> {
        let n = self.u16()? as usize;
        self.bytes(n)
    }

    fn string(&mut self) -> Result<String, AclError> {
        let b = self.binary()?;
        String::from_utf8(b.to_vec()).map_err(|_| AclError::Malformed(self.what))
    }
}

/// Read the packet of `kind` (first byte) with `body` (after the length).
pub fn parse(first: u8, body: &[u8]) -> Result<Packet, AclError> {
    match first >> 4 {
        CONNECT => {
            let mut r = Reader {
                buf: body,
                what: "CONNECT",
            };
            let _protocol = r.string()?;
            let _level = r.u8()?;
            let flags = r.u8()?;
            let _keep_alive = r.u16()?;
            let client_id = r.string()?;
            let will_topic = if flags & 0x04 != 0 {
                let t = r.string()?;
                let _message = r.binary()?;
                Some(t)
            } else {
                None
            };
            let user = if flags & 0x80 != 0 {
                Some(r.string()?)
            } else {
                None
            };
            let password = if flags & 0x40 != 0 {
                Some(String::from_utf8_lossy(r.binary()?).into_owned())
            } else {
                None
            };
            Ok(Packet::Connect {
                client_id,
                user,
                password,
                will_topic,
            })
        }
        PUBLISH => {
            let mut r = Reader {
                buf: body,
                what: "PUBLISH",
            };
            Ok(Packet::Publish { topic: r.string()? })
        }
        SUBSCRIBE => {
            let mut r = Reader {
                buf: body,
                what: "SUBSCRIBE",
            };
            let _packet_id = r.u16()?;
            let mut filters = Vec::new();
            while !r.buf.is_empty() {
                filters.push(r.string()?);
                let _qos = r.u8()?;
            }
            if filters.is_empty() {
                return Err(AclError::Malformed("SUBSCRIBE"));
            }
            Ok(Packet::Subscribe { filters })
        }
        _ => Ok(Packet::Other),
    }
}

/// May `node` (the authenticated user) send `p`?
pub fn check(node: &str, p: &Packet) -> Result<(), AclError> {
    match p {
        Packet::Connect { will_topic, .. } => match will_topic {
            Some(t) if *t != topic::up(node) => Err(AclError::Denied(format!(
                "last will to {} (only {} is allowed)",
                clip(t),
                topic::up(node)
            ))),
            _ => Ok(()),
        },
        Packet::Publish { topic: t } if *t != topic::up(node) => Err(AclError::Denied(format!(
            "publish to {} (only {} is allowed)",
            clip(t),
            topic::up(node)
        ))),
        Packet::Subscribe { filters } => match filters.iter().find(|f| **f != topic::down(node)) {
            Some(f) => Err(AclError::Denied(format!(
                "subscribe to {} (only {} is allowed)",
                clip(f),
                topic::down(node)
            ))),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    pub fn connect(client: &str, user: &str, pass: &str, will: Option<&str>) -> Vec<u8> {
        let mut body = string("MQTT");
        body.push(4);
        let mut flags = 0xC0;
        if will.is_some() {
            flags |= 0x04;
        }
        body.push(flags);
        body.extend_from_slice(&5u16.to_be_bytes());
        body.extend(string(client));
        if let Some(w) = will {
            body.extend(string(w));
            body.extend(string("bye"));
        }
        body.extend(string(user));
        body.extend(string(pass));
        body
    }

    #[test]
    fn lengths_decode_and_overlong_ones_are_refused() {
        assert_eq!(remaining_length(&[0x00]), Ok(Some((0, 1))));
        assert_eq!(remaining_length(&[0x7f]), Ok(Some((127, 1))));
        assert_eq!(remaining_length(&[0x80, 0x01]), Ok(Some((128, 2))));
        assert_eq!(
            remaining_length(&[0xff, 0xff, 0xff, 0x7f]),
            Ok(Some((268_435_455, 4)))
        );
        assert_eq!(remaining_length(&[0x80]), Ok(None));
        assert!(remaining_length(&[0x80, 0x80, 0x80, 0x80, 0x01]).is_err());
    }

    #[test]
    fn a_node_may_use_its_own_topics_only() {
        let up = topic::up("b1");
        let down = topic::down("b1");
        let p = parse(0x10, &connect("b1", "b1", "pw", Some(&up))).unwrap();
        assert_eq!(
            p,
            Packet::Connect {
                client_id: "b1".into(),
                user: Some("b1".into()),
                password: Some("pw".into()),
                will_topic: Some(up.clone()),
            }
        );
        assert!(check("b1", &p).is_ok());
        let other_will = parse(0x10, &connect("b1", "b1", "pw", Some(&topic::up("b2")))).unwrap();
        assert!(check("b1", &other_will).is_err());

        let publish = |t: &str| {
            let mut body = string(t);
            body.extend_from_slice(b"payload");
            parse(0x30, &body).unwrap()
        };
        assert!(check("b1", &publish(&up)).is_ok());
        for t in [
            topic::up("b2"),
            down.clone(),
            "#".into(),
            "edgedesk/v1/nodes/b1/up/x".into(),
        ] {
            assert!(check("b1", &publish(&t)).is_err(), "{t}");
        }

        let subscribe = |filters: &[&str]| {
            let mut body = 7u16.to_be_bytes().to_vec();
            for f in filters {
                body.extend(string(f));
                body.push(1);
            }
            parse(0x82, &body)
        };
        assert!(check("b1", &subscribe(&[&down]).unwrap()).is_ok());
        for f in [
            "#",
            "edgedesk/v1/nodes/+/down",
            "edgedesk/v1/nodes/b2/down",
            up.as_str(),
        ] {
            assert!(
                check("b1", &subscribe(&[&down, f]).unwrap()).is_err(),
                "{f}"
            );
        }
        assert!(subscribe(&[]).is_err(), "a SUBSCRIBE without filters");
        assert_eq!(parse(0xC0, &[]).unwrap(), Packet::Other, "PINGREQ");
    }

    #[test]
    fn truncated_packets_are_malformed_not_a_panic() {
        let full = connect("b1", "b1", "pw", None);
        for n in 0..full.len() {
            assert!(parse(0x10, &full[..n]).is_err(), "{n} bytes");
        }
        assert!(parse(0x30, &[0, 5, b'a']).is_err());
    }
}
