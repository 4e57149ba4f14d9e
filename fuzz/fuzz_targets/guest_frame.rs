#![no_main]
// Filled in by the netstack work.
libfuzzer_sys::fuzz_target!(|_data: &[u8]| {});
