//! The text parsers: channel names, offsets, ids and event names.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| bellhop_fuzz::parse_names(data));
