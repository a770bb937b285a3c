//! The JSON text-frame decoder: any bytes a client sends in a text frame.
#![no_main]

use bellhop_protocol::Codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bellhop_fuzz::decode(Codec::Json, data));
