#![no_main]
// Filled in by the DNS work.
libfuzzer_sys::fuzz_target!(|_data: &[u8]| {});
