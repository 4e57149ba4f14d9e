//! The Internet checksum (RFC 1071), summed 32 bytes at a time into 64-bit accumulators.
//!
//! It is on the hot path: every IPv4 packet a guest sends to the gateway is verified, and
//! every packet limanet emits is summed.

/// Adds `data` to a running sum (big-endian 16-bit words; an odd tail byte is padded with zero).
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    // The bulk is summed in native byte order, eight independent 32-bit lanes per step, so
    // the loop vectorizes; the folded result is swapped to network order once (RFC 1071
    // 2(B): the sum is byte-order independent). No carry is lost: each lane gains less than
    // 2^32 per step, over at most 2^11 steps.
    let mut words = data.chunks_exact(32);
    let mut lanes = [0u64; 8];
    for w in &mut words {
        for (lane, c) in lanes.iter_mut().zip(w.chunks_exact(4)) {
            *lane += u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
        }
    }
    let mut native = lanes.iter().sum::<u64>();
    while native >> 16 != 0 {
        native = (native & 0xffff) + (native >> 16);
    }
    acc += u64::from(u16::from_be(native as u16));
    let mut chunks = words.remainder().chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        acc += u64::from(u16::from_be_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        acc += u64::from(rest[i]) << 8;
    }
    acc
}

/// Folds a running sum to 16 bits and complements it.
pub fn finish(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2 (before complement).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(finish(sum(&data, 0)), !0xddf2);
        // Odd length: a trailing byte is the high half of a word.
        assert_eq!(finish(sum(&[0x12], 0)), !0x1200);
        // Splitting a buffer at an even offset gives the same result.
        let long: Vec<u8> = (0..=255u8).cycle().take(1501).collect();
        assert_eq!(
            finish(sum(&long[600..], sum(&long[..600], 0))),
            finish(sum(&long, 0))
        );
    }

    /// Sums 16-bit words one by one, as RFC 1071 describes.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u64 = 0;
        for pair in data.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            acc += hi | pair.get(1).map_or(0, |&lo| u64::from(lo));
        }
        finish(acc)
    }

    #[test]
    fn matches_the_word_by_word_sum_for_every_length_and_alignment() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        for len in (0..80).chain([1499, 1500, 1514, 9000, 65535]) {
            for start in 0..3 {
                let d = &data[start..start + len];
                assert_eq!(finish(sum(d, 0)), reference(d), "len {len} start {start}");
            }
        }
        let ones = vec![0xffu8; 65535];
        assert_eq!(finish(sum(&ones, 0)), reference(&ones));
    }

    /// Throughput of `sum` (run with `--release --ignored --nocapture`).
    #[test]
    #[ignore]
    fn throughput() {
        let frame = vec![0xa5u8; 1500];
        let rounds = 2_000_000u64;
        let start = std::time::Instant::now();
        let mut acc = 0;
        for i in 0..rounds {
            acc = sum(&frame, acc ^ i);
        }
        let secs = start.elapsed().as_secs_f64();
        let gbit = (rounds * 1500 * 8) as f64 / secs / 1e9;
        println!("checksum: {gbit:.1} Gbit/s of 1500-byte packets on one core ({acc})");
    }
}
