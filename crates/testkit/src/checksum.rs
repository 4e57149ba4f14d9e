//! Checksums and reproducible test data for large transfers (e.g. 100 MB through the daemon).

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::IoContext;
use crate::Result;

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Hex SHA-256 of everything `r` yields, and the number of bytes read.
pub fn sha256_reader(mut r: impl Read) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex(&h.finalize()), total))
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let f = std::fs::File::open(path).ctx(|| format!("cannot open {}", path.display()))?;
    let (h, _) = sha256_reader(f).ctx(|| format!("cannot read {}", path.display()))?;
    Ok(h)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A reader of `len` reproducible pseudo-random bytes (xorshift64* seeded by `seed`): the same
/// seed and length give the same bytes on both ends of a transfer, without storing them.
#[derive(Debug, Clone)]
pub struct PatternReader {
    state: u64,
    remaining: u64,
    pending: [u8; 8],
    pending_len: usize,
}

impl PatternReader {
    /// `len` bytes derived from `seed`.
    pub fn new(seed: u64, len: u64) -> Self {
        PatternReader {
            // xorshift must not start at 0.
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
            remaining: len,
            pending: [0; 8],
            pending_len: 0,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes()
    }

    /// Hex SHA-256 of the whole pattern (consumes a clone).
    pub fn sha256(&self) -> String {
        // Reading from a PatternReader never fails.
        sha256_reader(self.clone())
            .map(|(h, _)| h)
            .unwrap_or_default()
    }
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let out = &mut buf[..want];
        // Leftover bytes of the last word first, then whole words, then a partial word.
        let n = self.pending_len.min(out.len());
        let start = 8 - self.pending_len;
        out[..n].copy_from_slice(&self.pending[start..start + n]);
        self.pending_len -= n;
        let mut chunks = out[n..].chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_word());
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            self.pending = self.next_word();
            tail.copy_from_slice(&self.pending[..tail.len()]);
            self.pending_len = 8 - tail.len();
        }
        self.remaining -= want as u64;
        Ok(want)
    }
}

/// Writes the pattern of `len` bytes from `seed` to `path`; returns its hex SHA-256.
pub fn write_pattern_file(path: &Path, seed: u64, len: u64) -> Result<String> {
    let mut f = std::fs::File::create(path).ctx(|| format!("cannot create {}", path.display()))?;
    let mut r = PatternReader::new(seed, len);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf).ctx(|| "pattern".to_string())?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        f.write_all(&buf[..n])
            .ctx(|| format!("cannot write {}", path.display()))?;
    }
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_abc_matches_the_standard_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn pattern_is_reproducible_and_independent_of_read_sizes() {
        let mut a = Vec::new();
        PatternReader::new(7, 1001).read_to_end(&mut a).unwrap();
        assert_eq!(a.len(), 1001);
        for size in [1, 3, 7, 8, 9, 13, 4096] {
            let mut b = Vec::new();
            let mut r = PatternReader::new(7, 1001);
            let mut buf = vec![0u8; size];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                b.extend_from_slice(&buf[..n]);
            }
            assert_eq!(a, b, "read size {size}");
        }
        assert_eq!(PatternReader::new(7, 1001).sha256(), sha256_hex(&a));
        assert_ne!(PatternReader::new(8, 1001).sha256(), sha256_hex(&a));
    }
}
