//! The MessagePack binary-frame decoder (`bellhop.v1.msgpack`): any bytes a client sends in a
//! binary frame.
#![no_main]

use bellhop_protocol::Codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bellhop_fuzz::decode(Codec::MsgPack, data));
