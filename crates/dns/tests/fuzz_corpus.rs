//! Replays the cargo-fuzz corpus of the `dns_query` target (fuzz/corpus/dns_query) through the
//! same entry point, so every input that ever found a bug stays a regression test on stable.

use std::path::Path;

#[test]
fn dns_query_corpus_replays_without_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/dns_query");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        limanet_dns::fuzz_query(&data);
        // Every prefix too: truncated packets are the commonest malformed input.
        for len in 0..data.len() {
            limanet_dns::fuzz_query(&data[..len]);
        }
        count += 1;
    }
    assert!(count >= 5, "corpus has only {count} entries");
}
