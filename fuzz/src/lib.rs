//! What the fuzz targets check, shared by them and by the seed generator.
//!
//! Every function here takes bytes a client (or, for `decode_server`, a server) controls and
//! must return without panicking, whatever they are. Beyond "no panic", each one checks a
//! property that a decoder bug would break: whatever decodes re-encodes, in both codecs, to
//! bytes that decode to the same value. A failed assertion is a crash to libFuzzer, so a
//! round-trip bug is reported like a panic.

use bellhop_protocol::validate::{self, Limits};
use bellhop_protocol::{is_valid_id, Channel, ClientFrame, Codec, Offset};

/// Both codecs, for the round-trip checks.
const CODECS: [Codec; 2] = [Codec::Json, Codec::MsgPack];

/// Decodes `data` as a client request and as a server frame with `codec`, and checks that
/// whatever decodes survives a round trip through both codecs unchanged.
pub fn decode(codec: Codec, data: &[u8]) {
    if let Ok(request) = codec.decode_request(data) {
        if let ClientFrame::Publish(publish) = &request.frame {
            // What the gateway runs next on a publish; pure, so it must not panic either.
            let _ = validate::publish(publish, &Limits::default());
        }
        for other in CODECS {
            let bytes = other.encode_request(&request).unwrap_or_else(|e| {
                panic!("decoded {request:?} but {other:?} cannot encode it: {e}")
            });
            let again = other.decode_request(&bytes).unwrap_or_else(|e| {
                panic!("{other:?} cannot decode its own encoding of {request:?}: {e}")
            });
            assert_eq!(again, request, "{other:?} round trip changed the request");
        }
    }
    if let Ok(frame) = codec.decode_server(data) {
        for other in CODECS {
            let bytes = other.encode(&frame).unwrap_or_else(|e| {
                panic!("decoded {frame:?} but {other:?} cannot encode it: {e}")
            });
            let again = other.decode_server(&bytes).unwrap_or_else(|e| {
                panic!("{other:?} cannot decode its own encoding of {frame:?}: {e}")
            });
            assert_eq!(
                again, frame,
                "{other:?} round trip changed the server frame"
            );
        }
    }
}

/// Parses `data` as a channel name, an offset, an id and an event name (the text parsers that
/// client input reaches outside a frame too: HTTP API paths and query strings). A channel that
/// parses prints back to exactly its input; an offset prints to a canonical form that parses
/// back to the same offset.
pub fn parse_names(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(channel) = text.parse::<Channel>() {
        assert_eq!(
            channel.to_string(),
            text,
            "a channel prints back to its name"
        );
        assert!(channel == Channel::Broadcast || is_valid_id(channel.id()));
    }
    if let Ok(offset) = text.parse::<Offset>() {
        let printed = offset.to_string();
        assert_eq!(printed.parse::<Offset>(), Ok(offset), "{printed}");
        assert!(offset.next_after(0) > offset || offset.seq == u64::MAX);
    }
    let _ = is_valid_id(text);
    let _ = validate::event(text, &Limits::default());
}
