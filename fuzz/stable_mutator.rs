//! A time-boxed mutation fuzzer for stable Rust, shared by the corpus replay tests
//! (`crates/*/tests/fuzz_corpus.rs`): the cargo-fuzz targets need nightly, so CI drives the same
//! entry points with random inputs and mutated corpus files for a few seconds each.

/// A small xorshift mutator: the corpus plus random bytes, mutated; runs `target` on each
/// input until `secs` pass. Returns how many inputs ran.
pub fn mutation_fuzz(corpus: &[Vec<u8>], secs: u64, max_len: usize, target: fn(&[u8])) -> u64 {
    let seed = std::env::var("LIMANET_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("mutation fuzz seed {seed} (LIMANET_FUZZ_SEED to replay)");
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut runs = 0u64;
    while std::time::Instant::now() < deadline {
        for _ in 0..64 {
            let pick = next() as usize;
            let mut input = if corpus.is_empty() || pick.is_multiple_of(8) {
                (0..(next() as usize % max_len))
                    .map(|_| next() as u8)
                    .collect()
            } else {
                corpus[pick % corpus.len()].clone()
            };
            for _ in 0..1 + next() % 4 {
                let r = next() as usize;
                let len = input.len();
                match r % 6 {
                    0 if len > 0 => input[r / 8 % len] ^= 1 << (r % 8),
                    1 if len > 0 => input[r / 8 % len] = next() as u8,
                    2 if len < max_len => input.insert(r / 8 % (len + 1), next() as u8),
                    3 if len > 0 => {
                        input.remove(r / 8 % len);
                    }
                    4 => input.truncate(r / 8 % (len + 1)),
                    5 if !corpus.is_empty() => {
                        let other = &corpus[r / 8 % corpus.len()];
                        let at = r / 64 % (other.len() + 1);
                        input.truncate(r / 16 % (len + 1));
                        input.extend_from_slice(&other[at..]);
                        input.truncate(max_len);
                    }
                    _ => {}
                }
            }
            target(&input);
            runs += 1;
        }
    }
    runs
}
