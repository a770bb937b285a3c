//! Bellhop wire protocol v1: every frame a client or server sends, the message envelope, channel
//! names, priorities, offsets, and the JSON and MessagePack codecs that turn them into bytes.
//!
//! This crate is pure: it does no IO and knows nothing of tokio, sockets or Redis. Everything in it
//! is a function over values, so it is tested with plain unit and property tests.
//!
//! The normative description of the protocol is `docs/PROTOCOL.md` at the root of the repository.

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
