//! The Internet checksum (RFC 1071), summed 32 bits at a time into a 64-bit accumulator.

/// Adds `data` to a running sum (big-endian 16-bit words; an odd tail byte is padded with zero).
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(4);
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
}
