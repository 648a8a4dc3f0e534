//! geokv-storage's value codec: never panics; what decodes re-encodes to the same record.
//! The checks live in [`geokv_fuzz::value`], so `cargo test` replays the corpus without libFuzzer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| geokv_fuzz::value::check(data));
