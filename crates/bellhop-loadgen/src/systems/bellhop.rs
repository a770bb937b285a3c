//! Bellhop wire protocol v1, JSON codec (docs/PROTOCOL.md): the token goes in the query, the
//! `welcome` frame ends the handshake, `subscribe` is confirmed by `subscribed`, and published
//! messages arrive as `message` frames whose `message.payload` is the load generator's payload.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Message;

use super::{index_of, Delivery, Event, Payload, Sub, User, Wire, WireOptions};

/// The event name every load-generator publish carries.
pub const EVENT: &str = "LOADGEN";

/// Per-connection state of the Bellhop codec.
#[derive(Debug)]
pub struct BellhopWire {
    track_offsets: bool,
    idempotent: bool,
    next_id: u64,
}

impl BellhopWire {
    /// A codec for one connection.
    pub fn new(opts: &WireOptions) -> Self {
        Self {
            track_offsets: opts.track_offsets,
            idempotent: opts.resend_unanswered,
            next_id: 1,
        }
    }
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    offset: Option<Cow<'a, str>>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<&'a RawValue>,
    #[serde(default)]
    id: Option<u64>,
}

#[derive(Deserialize)]
struct Stored {
    payload: Payload,
}

/// How the gateway writes a `message` frame (field order of `ServerFrame::Message`).
const MESSAGE_PREFIX: &str = r#"{"type":"message","channel":""#;

impl BellhopWire {
    /// The common case without a full parse: a `message` frame as the gateway writes it, read
    /// up to the payload (the envelope's other fields are skipped unread). `None` sends the
    /// frame to the full decoder, so any other shape is still handled correctly. Parsing every
    /// envelope field made the load generator spend more CPU per Bellhop delivery than per
    /// NATS delivery, CPU the node under test then lacked on a shared machine.
    fn fast_message(&self, text: &str, chans: &[String]) -> Option<Delivery> {
        let rest = text.strip_prefix(MESSAGE_PREFIX)?;
        let (channel, rest) = rest.split_once('"')?;
        let rest = rest.strip_prefix(r#","offset":""#)?;
        let (offset, rest) = rest.split_once('"')?;
        let index = index_of(chans, channel)?;
        let at = rest.find(r#""payload":"#)?;
        let mut de = serde_json::Deserializer::from_str(&rest[at + 10..]);
        let payload = Payload::deserialize(&mut de).ok()?;
        Some(Delivery {
            index,
            payload,
            offset: self.track_offsets.then(|| offset.to_owned()),
        })
    }
}

impl Wire for BellhopWire {
    fn url(&self, base: &str, user: &User) -> String {
        format!("{base}?token={}", user.token)
    }

    fn hello(&mut self, _user: &User) -> Vec<Message> {
        Vec::new()
    }

    fn subscribe(&mut self, subs: &[Sub]) -> Vec<Message> {
        subs.iter()
            .map(|s| {
                let id = self.next_id;
                self.next_id += 1;
                let frame = match &s.since {
                    Some(since) => serde_json::json!({
                        "type": "subscribe", "id": id, "channel": s.channel, "since": since,
                    }),
                    None => {
                        serde_json::json!({ "type": "subscribe", "id": id, "channel": s.channel })
                    }
                };
                Message::text(frame.to_string())
            })
            .collect()
    }

    fn publish(&mut self, channel: &str, payload: &str, id: u64) -> Message {
        if self.idempotent {
            // The request id names the publish (channel and sequence number) for the whole run:
            // sent again after a reconnect, it is stored at most once.
            return Message::text(format!(
                r#"{{"type":"publish","id":{id},"channel":"{channel}","event":"{EVENT}","idempotencyKey":"lg-{id:x}","payload":{payload}}}"#
            ));
        }
        Message::text(format!(
            r#"{{"type":"publish","id":{id},"channel":"{channel}","event":"{EVENT}","payload":{payload}}}"#
        ))
    }

    fn decode(&mut self, message: &Message, chans: &[String], out: &mut Vec<Event>) {
        if let Message::Text(text) = message {
            if let Some(d) = self.fast_message(text.as_str(), chans) {
                out.push(Event::Delivery(d));
                return;
            }
        }
        let bytes: &[u8] = match message {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
            _ => return,
        };
        let frame: Frame<'_> = match serde_json::from_slice(bytes) {
            Ok(f) => f,
            Err(e) => {
                out.push(Event::Error(format!("undecodable frame: {e}")));
                return;
            }
        };
        let index = || frame.channel.as_deref().and_then(|c| index_of(chans, c));
        match frame.kind.as_ref() {
            "message" => {
                let Some(index) = index() else { return };
                let stored = frame
                    .message
                    .map(|raw| serde_json::from_str::<Stored>(raw.get()));
                // Someone else's message on the channel is not ours to count.
                if let Some(Ok(stored)) = stored {
                    out.push(Event::Delivery(Delivery {
                        index,
                        payload: stored.payload,
                        offset: if self.track_offsets {
                            frame.offset.map(Cow::into_owned)
                        } else {
                            None
                        },
                    }));
                }
            }
            "welcome" => out.push(Event::Ready),
            "subscribed" => {
                if let Some(index) = index() {
                    out.push(Event::Subscribed {
                        index,
                        recovered: frame.recovered,
                        offset: if self.track_offsets {
                            frame.offset.map(Cow::into_owned)
                        } else {
                            None
                        },
                    });
                }
            }
            "error" => {
                let reason = format!(
                    "error {}: {}",
                    frame.code.as_deref().unwrap_or("?"),
                    frame.message.map(RawValue::get).unwrap_or("")
                );
                match frame.id {
                    Some(id) if id >= super::PUBLISH_IDS => out.push(Event::Refused { id, reason }),
                    _ => out.push(Event::Error(reason)),
                }
            }
            "ack" => {
                if let Some(id) = frame.id.filter(|id| *id >= super::PUBLISH_IDS) {
                    out.push(Event::Acked { id });
                }
            }
            // join, leave, typing, pong: nothing to measure.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str, chans: &[String]) -> Vec<Event> {
        let mut wire = BellhopWire::new(&WireOptions {
            track_offsets: true,
            resend_unanswered: true,
        });
        let mut out = Vec::new();
        wire.decode(&Message::text(text), chans, &mut out);
        out
    }

    #[test]
    fn a_message_frame_becomes_a_delivery_with_its_offset() {
        let chans = vec!["room:1".to_owned(), "user:a".to_owned()];
        let payload = Payload { t: 5, s: 9, p: 2 }.encode(3);
        let frame = format!(
            r#"{{"type":"message","channel":"user:a","offset":"17-0","message":{{"messageId":"m","event":"LOADGEN","namespace":"h1","channel":"user:a","payload":{payload},"timestamp":"2026-11-23T10:11:47.291Z","sender":{{"id":"x","role":"staff"}},"priority":"normal"}}}}"#
        );
        let events = decode(&frame, &chans);
        match events.as_slice() {
            [Event::Delivery(d)] => {
                assert_eq!(d.index, 1);
                assert_eq!(d.payload, Payload { t: 5, s: 9, p: 2 });
                assert_eq!(d.offset.as_deref(), Some("17-0"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn the_fast_path_and_the_full_decoder_agree() {
        let chans = vec!["room:1".to_owned()];
        let payload = Payload { t: 1, s: 2, p: 3 }.encode(0);
        let gateway = format!(
            r#"{{"type":"message","channel":"room:1","offset":"9-1","message":{{"messageId":"m","event":"LOADGEN","payload":{payload},"priority":"normal"}}}}"#
        );
        // Same content, other field order: only the full decoder can read it.
        let reordered = format!(
            r#"{{"channel":"room:1","type":"message","message":{{"payload":{payload}}},"offset":"9-1"}}"#
        );
        for text in [gateway, reordered] {
            match decode(&text, &chans).as_slice() {
                [Event::Delivery(d)] => {
                    assert_eq!(d.payload, Payload { t: 1, s: 2, p: 3 });
                    assert_eq!(d.offset.as_deref(), Some("9-1"));
                }
                other => panic!("{text}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn an_idempotent_publish_carries_a_key_of_its_id_and_its_ack_is_recognised() {
        let id = super::super::publish_id(7, 3);
        let mut wire = BellhopWire::new(&WireOptions {
            track_offsets: true,
            resend_unanswered: true,
        });
        let Message::Text(text) = wire.publish("room:1", "{}", id) else {
            panic!("a Bellhop publish is a text frame")
        };
        let frame: serde_json::Value = serde_json::from_str(text.as_str()).expect("JSON");
        assert_eq!(frame["id"], id);
        assert_eq!(frame["idempotencyKey"], format!("lg-{id:x}"));
        let mut plain = BellhopWire::new(&WireOptions::default());
        let Message::Text(text) = plain.publish("room:1", "{}", id) else {
            panic!("a Bellhop publish is a text frame")
        };
        assert!(!text.as_str().contains("idempotencyKey"));
        let ack = format!(r#"{{"type":"ack","id":{id},"messageId":"m","offset":"5-0"}}"#);
        assert!(matches!(decode(&ack, &[]).as_slice(), [Event::Acked { id: i }] if *i == id));
        // An ack of a request that is not a publish of the load generator's is not one.
        assert!(decode(
            r#"{"type":"ack","id":4,"messageId":"m","offset":"5-0"}"#,
            &[]
        )
        .is_empty());
    }

    #[test]
    fn welcome_subscribed_and_errors_are_recognised() {
        let chans = vec!["room:1".to_owned()];
        assert!(matches!(
            decode(r#"{"type":"welcome","sessionId":"s","node":"n","userId":"u","role":"staff","property":"h1","heartbeatSeconds":30}"#, &chans).as_slice(),
            [Event::Ready]
        ));
        assert!(matches!(
            decode(r#"{"type":"subscribed","id":1,"channel":"room:1","offset":"1-0","recovered":true,"unread":0}"#, &chans).as_slice(),
            [Event::Subscribed { index: 0, recovered: Some(true), offset: Some(o) }] if o == "1-0"
        ));
        assert!(matches!(
            decode(r#"{"type":"error","id":2,"code":"forbidden","message":"no"}"#, &chans).as_slice(),
            [Event::Error(e)] if e.contains("forbidden")
        ));
        // A refused publish names itself by its id: its channel and sequence number come back.
        let id = super::super::publish_id(7, 41);
        let refused = decode(
            &format!(
                r#"{{"type":"error","id":{id},"code":"rate_limited","message":"too many requests waiting","retryAfterMs":100}}"#
            ),
            &chans,
        );
        assert!(
            matches!(refused.as_slice(), [Event::Refused { id: got, reason }] if *got == id && reason.contains("rate_limited")),
            "{refused:?}"
        );
        assert_eq!(super::super::publish_of(id), (7, 41));
    }
}
