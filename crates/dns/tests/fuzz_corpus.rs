//! Replays the cargo-fuzz corpus of the `dns_query` target (fuzz/corpus/dns_query) through the
//! same entry point, so every input that ever found a bug stays a regression test on stable.

use std::path::Path;

#[path = "../../../fuzz/stable_mutator.rs"]
mod stable_mutator;
use stable_mutator::mutation_fuzz;

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

/// Beyond the corpus, on stable: random inputs and mutations of the corpus (bit flips, byte
/// changes, insertions, deletions, truncation, splices) through the same entry point for a
/// fixed time, `LIMANET_FUZZ_SECS` (default 10; 0 skips). The seed is printed, and
/// `LIMANET_FUZZ_SEED` replays a run.
#[test]
fn dns_query_time_boxed_mutation_fuzz() {
    let secs: u64 = std::env::var("LIMANET_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/dns_query");
    let corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .map(|e| std::fs::read(e.expect("entry").path()).expect("read"))
        .collect();
    let runs = mutation_fuzz(&corpus, secs, 600, limanet_dns::fuzz_query);
    eprintln!("dns_query: {runs} inputs in {secs} s");
}
