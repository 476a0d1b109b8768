//! Feeds arbitrary messages through the whole pure pipeline: pgoutput decoding, the row decoder
//! (relation cache, filter rules, value conversion, keys from a closure) and the stitcher. Every
//! stage must return an error or a result, never panic. The rules match every table, and
//! columns by globs that arbitrary names often hit, so that columns are left out, masked and
//! hashed and UPDATEs skipped.
//!
//! The input is a sequence of messages, each preceded by its length as two bytes (big-endian).
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

use bemi_core::rules::{HashKey, Rules, TableRule};
use bemi_core::stitch::Stitcher;
use bemi_core::{Lsn, Oid, Operation, RowDecoder};

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
static RULES: OnceLock<Arc<Rules>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    });
    let rules = RULES.get_or_init(|| {
        let key = HashKey::new("a fuzzing key of 32 bytes ......").expect("a key");
        let rule = TableRule::new("*.*")
            .ignore(["*a*"])
            .mask(["*e*"])
            .hash(["*i*"])
            .operations([Operation::Create, Operation::Update, Operation::Delete]);
        Arc::new(Rules::new().ignore_table("*.*z*").table(rule).hash_key(key))
    });
    let mut decoder =
        RowDecoder::new(|_: Oid, _: Lsn| vec!["id".to_owned()]).rules(Arc::clone(rules));
    let mut stitcher = Stitcher::new("fuzz");
    let mut out = Vec::new();
    let mut rest = data;
    let mut position = 0u64;
    while let [high, low, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*high, *low])).min(tail.len());
        let (message, next) = tail.split_at(len);
        rest = next;
        position += 1;
        let Ok(message) = bemi_core::pgoutput::decode(Bytes::copy_from_slice(message)) else {
            continue;
        };
        let Ok(Some(event)) = runtime.block_on(decoder.decode(message)) else {
            continue;
        };
        stitcher.push(event, Lsn(position), chrono::Utc::now(), &mut out);
    }
});
