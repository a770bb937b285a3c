//! Socket.IO 4 (Engine.IO 4) over WebSocket only, against `bench/peers/socketio/server.js`.
//!
//! Every WebSocket text message is one Engine.IO packet: `0{...}` open, `2` ping (answered with
//! `3`), `1` close, `6` noop, and `4<socket.io packet>`. The Socket.IO packets used, in the main
//! namespace: `40{...}` connect (sent by [`Wire::hello`] with the user's id as auth, answered with
//! `40{"sid":...}` → [`Event::Ready`]), `44{...}` connect error, `41` disconnect, `42[...]` event
//! and `43<id>[...]` acknowledgement.
//!
//! Room names are Bellhop's channel names as they are (`room:12`). The server's events are
//! `sub` (a list of rooms, acknowledged with `true`), `pub` (room, payload) and `m` (room,
//! payload) for each delivery.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use super::{index_of, Delivery, Event, Payload, Sub, User, Wire, WireOptions};

/// The event name of a delivery (`io.to(room).emit("m", room, payload)`).
pub const DELIVERY_EVENT: &str = "m";

/// The path and query that open an Engine.IO 4 session straight on a WebSocket.
pub const PATH: &str = "/socket.io/?EIO=4&transport=websocket";

/// Per-connection state of the Socket.IO codec.
#[derive(Debug, Default)]
pub struct SocketIoWire {
    /// The next acknowledgement id.
    next_ack: u64,
    /// Subscribe calls not acknowledged yet: (ack id, number of rooms).
    pending: Vec<(u64, usize)>,
}

impl SocketIoWire {
    /// A codec for one connection.
    pub fn new(_opts: &WireOptions) -> Self {
        Self::default()
    }

    fn decode_socketio(&mut self, packet: &[u8], chans: &[String], out: &mut Vec<Event>) {
        let Some((&kind, rest)) = packet.split_first() else {
            out.push(Event::Error("socket.io: empty packet".into()));
            return;
        };
        // Only the main namespace is used: a packet for another one (`/nsp,...`) is not ours.
        if rest.first() == Some(&b'/') {
            return;
        }
        match kind {
            // CONNECT: `{"sid":...}`.
            b'0' => out.push(Event::Ready),
            b'1' => out.push(Event::Error("socket.io: disconnected by the server".into())),
            b'2' => {
                let (_ack, json) = split_ack(rest);
                self.decode_event(json, chans, out);
            }
            b'3' => {
                let (Some(id), json) = split_ack(rest) else {
                    out.push(Event::Error(
                        "socket.io: acknowledgement without an id".into(),
                    ));
                    return;
                };
                let Some(at) = self.pending.iter().position(|(ack, _)| *ack == id) else {
                    // Not one of ours (or already answered).
                    return;
                };
                let (_, count) = self.pending.swap_remove(at);
                match serde_json::from_slice::<(bool,)>(json) {
                    Ok((true,)) => out.extend((0..count).map(|index| Event::Subscribed {
                        index,
                        recovered: None,
                        offset: None,
                    })),
                    _ => out.push(Event::Error(format!(
                        "socket.io: sub refused: {}",
                        String::from_utf8_lossy(json)
                    ))),
                }
            }
            b'4' => out.push(Event::Error(format!(
                "socket.io: connect error: {}",
                String::from_utf8_lossy(rest)
            ))),
            // Binary events and acks (5, 6) carry attachments the benchmark never sends.
            b'5' | b'6' => {}
            other => out.push(Event::Error(format!(
                "socket.io: unknown packet type {:?}",
                char::from(other)
            ))),
        }
    }

    fn decode_event(&mut self, json: &[u8], chans: &[String], out: &mut Vec<Event>) {
        // Any other event, or an `m` whose payload is not the load generator's, is not counted.
        let Ok(Delivered(event, room, payload)) = serde_json::from_slice::<Delivered<'_>>(json)
        else {
            return;
        };
        if event != DELIVERY_EVENT {
            return;
        }
        if let Some(index) = index_of(chans, &room) {
            out.push(Event::Delivery(Delivery {
                index,
                payload,
                offset: None,
            }));
        }
    }
}

/// `["m", room, payload]`.
#[derive(Deserialize)]
struct Delivered<'a>(
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    Payload,
);

/// The acknowledgement id in front of a packet's JSON, if any, and the JSON.
fn split_ack(rest: &[u8]) -> (Option<u64>, &[u8]) {
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return (None, rest);
    }
    let id = rest[..digits].iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    });
    (id, &rest[digits..])
}

/// Appends `s` as a JSON string.
fn push_json_str(s: &str, out: &mut String) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // A str always serializes.
        out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned()));
    }
}

impl Wire for SocketIoWire {
    fn url(&self, base: &str, _user: &User) -> String {
        format!("{}{PATH}", base.trim_end_matches('/'))
    }

    fn hello(&mut self, user: &User) -> Vec<Message> {
        // Engine.IO's open packet needs no answer; the namespace connect may be sent at once.
        let mut text = String::with_capacity(16 + user.id.len());
        text.push_str("40{\"user\":");
        push_json_str(&user.id, &mut text);
        text.push('}');
        vec![Message::text(text)]
    }

    fn subscribe(&mut self, subs: &[Sub]) -> Vec<Message> {
        if subs.is_empty() {
            return Vec::new();
        }
        let id = self.next_ack;
        self.next_ack += 1;
        self.pending.push((id, subs.len()));
        let mut text =
            String::with_capacity(16 + subs.iter().map(|s| s.channel.len() + 3).sum::<usize>());
        let _ = write!(text, "42{id}[\"sub\",[");
        for (i, sub) in subs.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            push_json_str(&sub.channel, &mut text);
        }
        text.push_str("]]");
        vec![Message::text(text)]
    }

    fn publish(&mut self, channel: &str, payload: &str, _id: u64) -> Message {
        let mut text = String::with_capacity(channel.len() + payload.len() + 16);
        text.push_str("42[\"pub\",");
        push_json_str(channel, &mut text);
        text.push(',');
        text.push_str(payload);
        text.push(']');
        Message::text(text)
    }

    fn decode(&mut self, message: &Message, chans: &[String], out: &mut Vec<Event>) {
        let packet: &[u8] = match message {
            Message::Text(t) => t.as_bytes(),
            // Binary attachments are never sent to us; control frames are the driver's.
            _ => return,
        };
        let Some((&kind, rest)) = packet.split_first() else {
            out.push(Event::Error("engine.io: empty packet".into()));
            return;
        };
        match kind {
            b'4' => self.decode_socketio(rest, chans, out),
            // A ping (with its probe data, if any) is answered with a pong carrying the same.
            b'2' => {
                let mut pong = String::with_capacity(packet.len());
                pong.push('3');
                pong.push_str(&String::from_utf8_lossy(rest));
                out.push(Event::Reply(Message::text(pong)));
            }
            // open (the session's parameters), pong, upgrade, noop: nothing to do.
            b'0' | b'3' | b'5' | b'6' => {}
            b'1' => out.push(Event::Error("engine.io: closed by the server".into())),
            other => out.push(Event::Error(format!(
                "engine.io: unknown packet type {:?}",
                char::from(other)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chans() -> Vec<String> {
        vec!["room:12".to_owned(), "user:lg-3".to_owned()]
    }

    fn decode(wire: &mut SocketIoWire, text: &str) -> Vec<Event> {
        let mut out = Vec::new();
        wire.decode(&Message::text(text), &chans(), &mut out);
        out
    }

    fn text_of(m: &Message) -> &str {
        match m {
            Message::Text(t) => t.as_str(),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn subs() -> Vec<Sub> {
        chans()
            .into_iter()
            .map(|channel| Sub {
                channel,
                since: None,
            })
            .collect()
    }

    #[test]
    fn url_hello_subscribe_and_publish_encode_the_protocol() {
        let mut wire = SocketIoWire::new(&WireOptions::default());
        let user = User {
            id: "lg-\"1".into(),
            token: String::new(),
        };
        assert_eq!(
            wire.url("ws://127.0.0.1:9/", &user),
            "ws://127.0.0.1:9/socket.io/?EIO=4&transport=websocket"
        );
        let hello = wire.hello(&user);
        assert_eq!(text_of(&hello[0]), r#"40{"user":"lg-\"1"}"#);
        let sub = wire.subscribe(&subs());
        assert_eq!(text_of(&sub[0]), r#"420["sub",["room:12","user:lg-3"]]"#);
        let sub = wire.subscribe(&subs()[..1]);
        assert_eq!(text_of(&sub[0]), r#"421["sub",["room:12"]]"#);
        assert!(wire.subscribe(&[]).is_empty());
        let payload = Payload { t: 1, s: 2, p: 3 }.encode(2);
        assert_eq!(
            text_of(&wire.publish("room:12", &payload, 0)),
            format!(r#"42["pub","room:12",{payload}]"#)
        );
    }

    #[test]
    fn the_handshake_acks_and_pings_are_recognised() {
        let mut wire = SocketIoWire::new(&WireOptions::default());
        let open = r#"0{"sid":"a","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1048576}"#;
        assert!(decode(&mut wire, open).is_empty());
        assert!(matches!(
            decode(&mut wire, r#"40{"sid":"b"}"#).as_slice(),
            [Event::Ready]
        ));
        let _ = wire.subscribe(&subs());
        let _ = wire.subscribe(&subs()[..1]);
        // Acks in any order; an unknown or repeated id is ignored.
        assert!(matches!(
            decode(&mut wire, "431[true]").as_slice(),
            [Event::Subscribed {
                index: 0,
                recovered: None,
                ..
            }]
        ));
        assert!(matches!(
            decode(&mut wire, "430[true]").as_slice(),
            [
                Event::Subscribed { index: 0, .. },
                Event::Subscribed { index: 1, .. }
            ]
        ));
        assert!(decode(&mut wire, "430[true]").is_empty());
        match decode(&mut wire, "2").as_slice() {
            [Event::Reply(m)] => assert_eq!(text_of(m), "3"),
            other => panic!("unexpected {other:?}"),
        }
        match decode(&mut wire, "2probe").as_slice() {
            [Event::Reply(m)] => assert_eq!(text_of(m), "3probe"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn deliveries_name_their_channel() {
        let mut wire = SocketIoWire::new(&WireOptions::default());
        let payload = Payload { t: 5, s: 9, p: 2 }.encode(3);
        match decode(&mut wire, &format!(r#"42["m","user:lg-3",{payload}]"#)).as_slice() {
            [Event::Delivery(d)] => {
                assert_eq!(d.index, 1);
                assert_eq!(d.payload, Payload { t: 5, s: 9, p: 2 });
                assert!(d.offset.is_none());
            }
            other => panic!("unexpected {other:?}"),
        }
        // Other rooms, other events, other payloads and other namespaces are not counted.
        for text in [
            format!(r#"42["m","room:99",{payload}]"#),
            format!(r#"42["other","room:12",{payload}]"#),
            r#"42["m","room:12",{"hello":1}]"#.to_owned(),
            r#"42["m","room:12"]"#.to_owned(),
            format!(r#"42/admin,["m","room:12",{payload}]"#),
        ] {
            assert!(decode(&mut wire, &text).is_empty(), "{text}");
        }
    }

    #[test]
    fn errors_are_reported_without_panicking() {
        let mut wire = SocketIoWire::new(&WireOptions::default());
        let _ = wire.subscribe(&subs());
        for text in [
            r#"44{"message":"Not authorized"}"#,
            "41",
            "1",
            "",
            "4",
            "x",
            "4x",
            "43",
            "430[false]",
        ] {
            let events = decode(&mut wire, text);
            assert!(
                matches!(events.as_slice(), [Event::Error(_)]),
                "{text:?}: {events:?}"
            );
        }
        for text in [
            "42",
            "42[",
            "4299999999999999999999999[]",
            "3",
            "6",
            "43999[true]",
        ] {
            let events = decode(&mut wire, text);
            assert!(events.is_empty(), "{text:?}: {events:?}");
        }
    }
}
