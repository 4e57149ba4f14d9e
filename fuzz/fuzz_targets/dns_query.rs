#![no_main]
// The DNS query path without I/O: accept filter, handler (in-memory look-ups), UDP truncation.
// The corpus in fuzz/corpus/dns_query is replayed on stable by crates/dns/tests/fuzz_corpus.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    limanet_dns::fuzz_query(data);
});
