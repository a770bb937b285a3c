//! Bellhop wire protocol v1: every frame a client or server sends, the message envelope, channel
//! names, priorities, offsets, and the JSON and MessagePack codecs that turn them into bytes.
//!
//! This crate is pure: it does no IO and knows nothing of tokio, sockets or Redis. Everything in it
//! is a function over values, so it is tested with plain unit and property tests.
//!
//! The normative description of the protocol is `docs/PROTOCOL.md` at the root of the repository.

/// Serde for a type that travels as its text form: serialized with `Display`, deserialized with
/// `FromStr` (borrowing the text where the format allows), its parse error as the serde error.
macro_rules! serde_as_text {
    ($type:ty) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

mod channel;
mod codec;
mod frame;
mod offset;
mod priority;
pub mod validate;

pub use channel::{is_valid_id, Channel, ChannelError, MAX_ID_LEN};
pub use codec::{Codec, DecodeError, EncodeError, MSGPACK_SUBPROTOCOL};
pub use frame::{
    close, ClientFrame, Envelope, ErrorCode, HistoryEntry, PublishFrame, Request, Role, Sender,
    ServerFrame, Welcome,
};
pub use offset::{Offset, OffsetError};
pub use priority::Priority;
