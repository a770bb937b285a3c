//! The two codecs of protocol v1: JSON in text frames (the default) and MessagePack in binary
//! frames (negotiated with the `bellhop.v1.msgpack` subprotocol). Both carry the same objects with
//! the same field names, so one set of types serves both.

use bytes::Bytes;
use serde_json::Value;

use crate::{ClientFrame, Request, ServerFrame};

/// The WebSocket subprotocol that selects MessagePack binary frames.
pub const MSGPACK_SUBPROTOCOL: &str = "bellhop.v1.msgpack";

/// Deepest nesting a decoder accepts, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

/// How frames are turned into bytes on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// JSON objects in text frames.
    Json,
    /// MessagePack maps (named fields) in binary frames.
    MsgPack,
}

/// A client frame the server cannot use. Answered with `error bad_request`; the connection stays.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// The request id, when the frame was readable far enough to find one.
    pub id: Option<u64>,
    /// What is wrong, for the client's developer.
    pub message: String,
}

impl DecodeError {
    fn new(id: Option<u64>, message: impl Into<String>) -> Self {
        DecodeError {
            id,
            message: message.into(),
        }
    }
}

/// A value that could not be encoded (a bug, never client input).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode frame: {0}")]
pub struct EncodeError(String);

impl Codec {
    /// The codec a WebSocket subprotocol selects (`None`: JSON).
    pub fn from_subprotocol(subprotocol: Option<&str>) -> Codec {
        match subprotocol {
            Some(MSGPACK_SUBPROTOCOL) => Codec::MsgPack,
            _ => Codec::Json,
        }
    }

    /// Whether frames of this codec travel as binary WebSocket frames.
    pub fn is_binary(self) -> bool {
        self == Codec::MsgPack
    }

    /// Encodes a server frame. Called once per message per codec; the bytes are shared by every
    /// connection that receives them.
    pub fn encode(self, frame: &ServerFrame) -> Result<Bytes, EncodeError> {
        self.encode_value(frame)
    }

    /// A JSON `message` frame around an envelope that is JSON already (as this codec writes an
    /// [`Envelope`](crate::Envelope): the Redis backend stores it so), in three parts: this
    /// prefix, the envelope's JSON, [`Codec::JSON_MESSAGE_SUFFIX`]. Together they are the bytes
    /// [`Codec::Json`] would encode for the same [`ServerFrame::Message`], without parsing and
    /// writing the envelope again; a caller copies the parts straight into its own buffer (a
    /// WebSocket frame), so the envelope is copied once.
    pub fn json_message_prefix(
        channel: &crate::Channel,
        offset: crate::Offset,
    ) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(br#"{"type":"message","channel":"#);
        serde_json::to_writer(&mut out, channel).map_err(|e| EncodeError(e.to_string()))?;
        out.extend_from_slice(br#","offset":"#);
        serde_json::to_writer(&mut out, &offset).map_err(|e| EncodeError(e.to_string()))?;
        out.extend_from_slice(br#","message":"#);
        Ok(out)
    }

    /// What follows the envelope's JSON in a message frame built from [`Codec::json_message_prefix`].
    pub const JSON_MESSAGE_SUFFIX: &'static [u8] = b"}";

    /// Encodes a client request (used by clients and tests).
    pub fn encode_request(self, request: &Request) -> Result<Bytes, EncodeError> {
        self.encode_value(&request.to_value())
    }

    fn encode_value<T: serde::Serialize>(self, value: &T) -> Result<Bytes, EncodeError> {
        match self {
            Codec::Json => serde_json::to_vec(value)
                .map(Bytes::from)
                .map_err(|e| EncodeError(e.to_string())),
            Codec::MsgPack => rmp_serde::to_vec_named(value)
                .map(Bytes::from)
                .map_err(|e| EncodeError(e.to_string())),
        }
    }

    /// Decodes one client frame. Never panics, whatever the bytes.
    pub fn decode_request(self, bytes: &[u8]) -> Result<Request, DecodeError> {
        let value = self.decode_value(bytes)?;
        let Value::Object(mut map) = value else {
            return Err(DecodeError::new(
                None,
                "a frame must be an object with a \"type\"",
            ));
        };
        let id = match map.remove("id") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(id) => Some(id),
                None => {
                    return Err(DecodeError::new(
                        None,
                        "\"id\" must be a non-negative integer",
                    ))
                }
            },
        };
        if !map.contains_key("type") {
            return Err(DecodeError::new(id, "missing field `type`"));
        }
        let frame: ClientFrame = serde_json::from_value(Value::Object(map))
            .map_err(|e| DecodeError::new(id, e.to_string()))?;
        Ok(Request { id, frame })
    }

    /// The request id of a frame, without decoding the rest into values: for frames refused
    /// before they are processed (over the frame rate), whose `error` must still echo the id.
    /// `None` when the frame has no valid id or is not an object.
    pub fn peek_id(self, bytes: &[u8]) -> Option<u64> {
        #[derive(serde::Deserialize)]
        struct IdOnly {
            #[serde(default)]
            id: Option<u64>,
        }
        let parsed: Option<IdOnly> = match self {
            Codec::Json => serde_json::from_slice(bytes).ok(),
            Codec::MsgPack => rmp_serde::from_slice(bytes).ok(),
        };
        parsed.and_then(|p| p.id)
    }

    /// Decodes one server frame (used by clients and tests).
    pub fn decode_server(self, bytes: &[u8]) -> Result<ServerFrame, DecodeError> {
        let value = self.decode_value(bytes)?;
        serde_json::from_value(value).map_err(|e| DecodeError::new(None, e.to_string()))
    }

    fn decode_value(self, bytes: &[u8]) -> Result<Value, DecodeError> {
        match self {
            Codec::Json => serde_json::from_slice(bytes)
                .map_err(|e| DecodeError::new(None, format!("invalid JSON: {e}"))),
            Codec::MsgPack => {
                let mut rest = bytes;
                let mut de = rmp_serde::Deserializer::new(&mut rest);
                de.set_max_depth(MAX_DEPTH);
                let value: Value = serde::Deserialize::deserialize(&mut de)
                    .map_err(|e| DecodeError::new(None, format!("invalid MessagePack: {e}")))?;
                drop(de);
                if !rest.is_empty() {
                    return Err(DecodeError::new(
                        None,
                        "invalid MessagePack: trailing bytes after the frame",
                    ));
                }
                Ok(value)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Channel, Envelope, ErrorCode, Offset, Priority, PublishFrame, Role, Sender};
    use proptest::prelude::*;
    use serde_json::json;
    use std::sync::Arc;

    fn envelope() -> Arc<Envelope> {
        Arc::new(Envelope {
            message_id: "m1".into(),
            event: "SERVICE_REQUEST".into(),
            namespace: "h1".into(),
            channel: Channel::Dept("housekeeping".into()),
            payload: json!({"room": "101", "item": "towels", "count": 2}),
            timestamp: "2026-11-23T09:30:00.000Z".into(),
            sender: Sender {
                id: "g1".into(),
                role: Role::Guest,
            },
            priority: Priority::Normal,
            correlation_id: Some("c1".into()),
        })
    }

    #[test]
    fn a_message_around_stored_json_is_the_frame_the_json_codec_writes() {
        let mut quoted = (*envelope()).clone();
        // Text that JSON must escape, in the envelope and in the channel name.
        quoted.payload = json!({"note": "\"leak\" in 101\n\u{1F6BF}", "n": [1, 2.5, null]});
        for (channel, message) in [
            (Channel::Room("101".into()), envelope()),
            (Channel::User("a\"b".into()), Arc::new(quoted)),
        ] {
            let offset = Offset::new(1_700_000_000_000, 7);
            let stored = serde_json::to_string(message.as_ref()).expect("envelope JSON");
            let frame = ServerFrame::Message {
                channel: channel.clone(),
                offset,
                message,
            };
            let expected = Codec::Json.encode(&frame).expect("encode");
            let mut passed = Codec::json_message_prefix(&channel, offset).expect("prefix");
            passed.extend_from_slice(stored.as_bytes());
            passed.extend_from_slice(Codec::JSON_MESSAGE_SUFFIX);
            assert_eq!(
                std::str::from_utf8(&passed).unwrap(),
                std::str::from_utf8(&expected).unwrap()
            );
        }
    }

    fn every_client_frame() -> Vec<ClientFrame> {
        let room = Channel::Room("101".into());
        vec![
            ClientFrame::Auth { token: "t".into() },
            ClientFrame::Subscribe {
                channel: room.clone(),
                since: Some(Offset::new(5, 1)),
            },
            ClientFrame::Subscribe {
                channel: Channel::Broadcast,
                since: None,
            },
            ClientFrame::Unsubscribe {
                channel: room.clone(),
            },
            ClientFrame::Publish(PublishFrame {
                channel: room.clone(),
                event: "CHAT_MESSAGE".into(),
                payload: json!({"text": "hi"}),
                priority: Some(Priority::High),
                correlation_id: Some("c".into()),
                idempotency_key: Some("k-1".into()),
            }),
            ClientFrame::History {
                channel: room.clone(),
                since: None,
                limit: Some(10),
            },
            ClientFrame::Presence {
                channel: room.clone(),
            },
            ClientFrame::Typing {
                channel: room.clone(),
            },
            ClientFrame::Read {
                channel: room,
                offset: Offset::new(9, 0),
            },
            ClientFrame::Ping,
        ]
    }

    #[test]
    fn peek_id_finds_the_id_of_any_frame_and_nothing_in_garbage() {
        for codec in [Codec::Json, Codec::MsgPack] {
            for frame in every_client_frame() {
                let bytes = codec
                    .encode_request(&Request {
                        id: Some(77),
                        frame,
                    })
                    .unwrap();
                assert_eq!(codec.peek_id(&bytes), Some(77), "{codec:?}");
            }
        }
        assert_eq!(Codec::Json.peek_id(br#"{"type":"ping"}"#), None);
        assert_eq!(Codec::Json.peek_id(br#"{"id":-1}"#), None);
        assert_eq!(Codec::Json.peek_id(b"\xff\x00"), None);
        assert_eq!(Codec::MsgPack.peek_id(b"\xc1"), None);
    }

    fn every_server_frame() -> Vec<ServerFrame> {
        let room = Channel::Room("101".into());
        vec![
            ServerFrame::Welcome(crate::Welcome {
                id: Some(9),
                session_id: "s".into(),
                node: "n".into(),
                user_id: "u".into(),
                role: Role::Staff,
                property: "h1".into(),
                heartbeat_seconds: 30,
            }),
            ServerFrame::Subscribed {
                id: Some(1),
                channel: room.clone(),
                offset: Offset::new(1, 0),
                recovered: true,
                unread: 3,
            },
            ServerFrame::Unsubscribed {
                id: None,
                channel: room.clone(),
            },
            ServerFrame::Ack {
                id: Some(2),
                message_id: Some("m1".into()),
                offset: Offset::new(2, 0),
                unread: None,
                duplicate: true,
            },
            ServerFrame::History {
                id: Some(3),
                channel: room.clone(),
                messages: vec![crate::HistoryEntry {
                    offset: Offset::new(3, 0),
                    message: envelope(),
                }],
                more: true,
            },
            ServerFrame::Presence {
                id: Some(4),
                channel: room.clone(),
                users: vec!["a".into(), "b".into()],
            },
            ServerFrame::Message {
                channel: room.clone(),
                offset: Offset::new(4, 0),
                message: envelope(),
            },
            ServerFrame::Join {
                channel: room.clone(),
                user_id: "a".into(),
            },
            ServerFrame::Leave {
                channel: room.clone(),
                user_id: "a".into(),
            },
            ServerFrame::Typing {
                channel: room,
                user_id: "a".into(),
            },
            ServerFrame::Error {
                id: Some(5),
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
                retry_after_ms: Some(100),
            },
            ServerFrame::Pong { id: Some(6) },
        ]
    }

    #[test]
    fn every_client_frame_round_trips_through_both_codecs() {
        for codec in [Codec::Json, Codec::MsgPack] {
            for (i, frame) in every_client_frame().into_iter().enumerate() {
                let req = Request {
                    id: Some(i as u64),
                    frame,
                };
                let bytes = codec.encode_request(&req).unwrap();
                assert_eq!(codec.decode_request(&bytes).unwrap(), req, "{codec:?}");
            }
        }
    }

    #[test]
    fn every_server_frame_round_trips_through_both_codecs() {
        for codec in [Codec::Json, Codec::MsgPack] {
            for frame in every_server_frame() {
                let bytes = codec.encode(&frame).unwrap();
                assert_eq!(codec.decode_server(&bytes).unwrap(), frame, "{codec:?}");
            }
        }
    }

    #[test]
    fn json_wire_shape_is_camel_case_with_a_type() {
        let frame = ServerFrame::Message {
            channel: Channel::Room("101".into()),
            offset: Offset::new(7, 1),
            message: envelope(),
        };
        let v: Value = serde_json::from_slice(&Codec::Json.encode(&frame).unwrap()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["offset"], "7-1");
        assert_eq!(v["message"]["messageId"], "m1");
        assert_eq!(v["message"]["correlationId"], "c1");
        assert_eq!(v["message"]["sender"], json!({"id": "g1", "role": "guest"}));
        let err = ServerFrame::Error {
            id: None,
            code: ErrorCode::Unavailable,
            message: "x".into(),
            retry_after_ms: Some(5),
        };
        let v: Value = serde_json::from_slice(&Codec::Json.encode(&err).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"type": "error", "code": "unavailable", "message": "x", "retryAfterMs": 5})
        );
    }

    #[test]
    fn decodes_a_hand_written_publish() {
        let req = Codec::Json
            .decode_request(br#"{"type":"publish","id":3,"channel":"dept:housekeeping","event":"SERVICE_REQUEST","payload":{"room":"101"},"correlationId":"r-1","extra":true}"#)
            .unwrap();
        assert_eq!(req.id, Some(3));
        let ClientFrame::Publish(p) = req.frame else {
            panic!("not a publish")
        };
        assert_eq!(p.channel, Channel::Dept("housekeeping".into()));
        assert_eq!(p.priority, None);
        assert_eq!(p.correlation_id.as_deref(), Some("r-1"));
    }

    #[test]
    fn rejections_keep_the_id_when_it_was_readable() {
        let cases: &[(&[u8], Option<u64>, &str)] = &[
            (b"not json", None, "invalid JSON"),
            (b"[1,2]", None, "object"),
            (br#"{"id":-1,"type":"ping"}"#, None, "id"),
            (br#"{"id":"x","type":"ping"}"#, None, "id"),
            (br#"{"id":4}"#, Some(4), "type"),
            (br#"{"id":5,"type":"shout"}"#, Some(5), "unknown variant"),
            (br#"{"id":6,"type":"subscribe"}"#, Some(6), "channel"),
            (
                br#"{"id":7,"type":"subscribe","channel":"lobby:1"}"#,
                Some(7),
                "unknown channel kind",
            ),
            (
                br#"{"id":8,"type":"subscribe","channel":"room:1","since":"yesterday"}"#,
                Some(8),
                "invalid offset",
            ),
            (
                br#"{"id":9,"type":"publish","channel":"room:1","event":"X","priority":"asap"}"#,
                Some(9),
                "unknown variant",
            ),
        ];
        for (bytes, id, needle) in cases {
            let err = Codec::Json.decode_request(bytes).unwrap_err();
            assert_eq!(err.id, *id, "{}", String::from_utf8_lossy(bytes));
            assert!(
                err.message.contains(needle),
                "{:?} should mention {needle:?}",
                err.message
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep_json = format!(
            "{{\"type\":\"ping\",\"x\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(Codec::Json.decode_request(deep_json.as_bytes()).is_err());
        let mut deep_mp = vec![0x81, 0xa1, b'x'];
        deep_mp.extend(std::iter::repeat_n(0x91, 100_000));
        deep_mp.push(0xc0);
        assert!(Codec::MsgPack.decode_request(&deep_mp).is_err());
    }

    #[test]
    fn msgpack_trailing_bytes_are_refused() {
        let mut bytes = Codec::MsgPack
            .encode_request(&Request {
                id: None,
                frame: ClientFrame::Ping,
            })
            .unwrap()
            .to_vec();
        bytes.push(0xc0);
        assert!(Codec::MsgPack.decode_request(&bytes).is_err());
    }

    /// Found by the `decode_json` fuzz target: serde_json's default float parser may round to a
    /// neighbouring double, so a payload number reached subscribers one ULP off what its
    /// publisher sent (and its re-encoding did not even decode to itself). The protocol crate
    /// turns on serde_json's `float_roundtrip` for that.
    #[test]
    fn json_payload_numbers_are_parsed_exactly() {
        let bytes = br#"{"type":"publish","channel":"room:1","event":"X","payload":{"big":184462744073729551615,"f":1.8446274407372954e20}}"#;
        let req = Codec::Json.decode_request(bytes).unwrap();
        let ClientFrame::Publish(p) = &req.frame else {
            panic!("not a publish")
        };
        // std's parser rounds correctly: the reference.
        let exact = |s: &str| s.parse::<f64>().unwrap();
        assert_eq!(
            p.payload["big"].as_f64(),
            Some(exact("184462744073729551615"))
        );
        assert_eq!(
            p.payload["f"].as_f64(),
            Some(exact("1.8446274407372954e20"))
        );
        for codec in [Codec::Json, Codec::MsgPack] {
            let again = codec
                .decode_request(&codec.encode_request(&req).unwrap())
                .unwrap();
            assert_eq!(again, req, "{codec:?}");
        }
    }

    proptest! {
        #[test]
        fn no_byte_string_makes_the_decoders_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Codec::Json.decode_request(&bytes);
            let _ = Codec::MsgPack.decode_request(&bytes);
            let _ = Codec::Json.decode_server(&bytes);
            let _ = Codec::MsgPack.decode_server(&bytes);
        }

        #[test]
        fn every_finite_number_survives_both_codecs(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
            let req = Request {
                id: Some(1),
                frame: ClientFrame::Publish(PublishFrame {
                    channel: Channel::Room("1".into()),
                    event: "X".into(),
                    payload: json!({"x": x}),
                    priority: None,
                    correlation_id: None,
                    idempotency_key: None,
                }),
            };
            for codec in [Codec::Json, Codec::MsgPack] {
                let again = codec.decode_request(&codec.encode_request(&req).unwrap()).unwrap();
                prop_assert_eq!(&again, &req, "{:?}", codec);
            }
        }

        #[test]
        fn mutated_valid_frames_never_panic(idx in 0usize..10, pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
            for codec in [Codec::Json, Codec::MsgPack] {
                let frame = every_client_frame().swap_remove(idx);
                let mut bytes = codec.encode_request(&Request { id: Some(1), frame }).unwrap().to_vec();
                let at = pos.index(bytes.len());
                bytes[at] = byte;
                let _ = codec.decode_request(&bytes);
            }
        }
    }
}
