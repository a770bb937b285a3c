//! The format of live events on a channel's pub/sub channel, shared by the script (which writes
//! stored messages' JSON by hand) and the nodes (which publish presence and typing), and its
//! decoding: the envelope parsed once, straight from its text, and the text kept for JSON
//! subscribers. It sends and subscribes to nothing: `subscriber.rs` does.

use std::sync::Arc;

use bellhop_protocol::{Envelope, Offset};
use serde::{Deserialize, Serialize};

/// A live event as it travels on a channel's pub/sub channel. Short field names: every byte is
/// sent to every subscribed node. Stored messages are published by the script, which writes the
/// same JSON by hand; [`Live::decode`] reads them.
#[derive(Debug, Serialize)]
#[serde(tag = "k")]
pub(super) enum Live {
    /// A stored message: its offset, sequence number and envelope.
    #[serde(rename = "m")]
    Message {
        /// Offset.
        o: Offset,
        /// The channel's sequence number of this message (contiguous: gaps are detectable).
        s: u64,
        /// The message (shared from here on, never copied per subscriber).
        e: Arc<Envelope>,
        /// `e` as it arrived, for JSON subscribers ([`StoredMessage::json`]).
        #[serde(skip)]
        json: Arc<str>,
    },
    /// [`ChannelEvent::Join`].
    #[serde(rename = "join")]
    Join {
        /// Who.
        u: String,
    },
    /// [`ChannelEvent::Leave`].
    #[serde(rename = "leave")]
    Leave {
        /// Who.
        u: String,
    },
    /// [`ChannelEvent::Typing`].
    #[serde(rename = "typing")]
    Typing {
        /// Who.
        u: String,
    },
}

impl Live {
    /// Reads a live event. Not serde's derive for an internally tagged enum: that copies every
    /// field into a buffered tree before it looks at the tag (its `ContentVisitor` stood out in
    /// the cluster profile); here the envelope is parsed once, straight from its text, and the
    /// text kept.
    pub(super) fn decode(text: &str) -> Result<Live, String> {
        #[derive(Deserialize)]
        struct Fields<'a> {
            #[serde(borrow)]
            k: std::borrow::Cow<'a, str>,
            o: Option<Offset>,
            s: Option<u64>,
            #[serde(borrow)]
            e: Option<&'a serde_json::value::RawValue>,
            u: Option<String>,
        }
        let f: Fields<'_> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let user = |u: Option<String>| u.ok_or_else(|| format!("a {:?} event without \"u\"", f.k));
        match &*f.k {
            "m" => {
                let (Some(o), Some(s), Some(e)) = (f.o, f.s, f.e) else {
                    return Err("a message without \"o\", \"s\" or \"e\"".into());
                };
                let envelope: Envelope =
                    serde_json::from_str(e.get()).map_err(|e| e.to_string())?;
                Ok(Live::Message {
                    o,
                    s,
                    e: Arc::new(envelope),
                    json: Arc::from(e.get()),
                })
            }
            "join" => Ok(Live::Join { u: user(f.u)? }),
            "leave" => Ok(Live::Leave { u: user(f.u)? }),
            "typing" => Ok(Live::Typing { u: user(f.u)? }),
            other => Err(format!("unknown live event kind {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_format_round_trips_and_matches_what_the_script_writes() {
        let envelope = super::super::test_envelope("m1");
        // Exactly the concatenation in the script's publish.
        let json = serde_json::to_string(&envelope).unwrap();
        let wire = format!(r#"{{"k":"m","o":"1700000000000-3","s":42,"e":{json}}}"#);
        match Live::decode(&wire).unwrap() {
            Live::Message {
                o,
                s,
                e,
                json: text,
            } => {
                assert_eq!(o, Offset::new(1_700_000_000_000, 3));
                assert_eq!(s, 42);
                assert_eq!(*e, envelope);
                assert_eq!(&*text, json);
            }
            other => panic!("decoded {other:?}"),
        }
        let typing = serde_json::to_string(&Live::Typing { u: "u2".into() }).unwrap();
        assert_eq!(typing, r#"{"k":"typing","u":"u2"}"#);
        assert!(matches!(Live::decode(&typing), Ok(Live::Typing { u }) if u == "u2"));
        for (kind, notice) in [("join", "Join"), ("leave", "Leave")] {
            let text = format!(r#"{{"k":"{kind}","u":"u3"}}"#);
            assert!(format!("{:?}", Live::decode(&text).unwrap()).starts_with(notice));
        }
    }

    #[test]
    fn malformed_live_events_are_errors_not_panics() {
        for text in [
            "",
            "[]",
            r#"{"k":"m","o":"1-0","s":1}"#,
            r#"{"k":"m","o":"1-0","s":1,"e":{"not":"an envelope"}}"#,
            r#"{"k":"m","o":"x","s":1,"e":{}}"#,
            r#"{"k":"typing"}"#,
            r#"{"k":"other","u":"u"}"#,
            r#"{"u":"u"}"#,
        ] {
            assert!(Live::decode(text).is_err(), "{text} decoded");
        }
    }
}
