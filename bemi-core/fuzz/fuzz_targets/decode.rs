//! Feeds arbitrary bytes to the pgoutput decoder: it must return, never panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bemi_core::pgoutput::decode(Bytes::copy_from_slice(data));
});
