//! A short-lived, bounded cache of the replies this server builds itself (static hosts and
//! host-resolver answers), keyed by the exact question bytes, so a name asked again within a
//! second is answered without parsing, look-up or encoding: a copy and a new id. Forwarded
//! replies are never cached here (the upstream's TTLs and data are relayed as they are).
//!
//! The key holds everything a local reply depends on: the question exactly as sent (the reply
//! repeats the owner name in the query's own case), RD and CD, whether the client speaks EDNS
//! and the UDP size it allows, and the transport. Entries live [`REPLY_CACHE_TTL`] (less than
//! the TTL 5 the records carry) and are dropped when the static hosts change. No I/O.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::message::{EDNS_UDP_LIMIT, HEADER_LEN, UDP_REPLY_LIMIT};

/// How long a locally built reply is reused; the same second for which getaddrinfo results
/// are reused, so /etc/hosts and resolver changes still show within a second.
pub const REPLY_CACHE_TTL: Duration = Duration::from_secs(1);

/// Most cached replies (bounded memory under floods of distinct names).
pub const REPLY_CACHE_MAX: usize = 4096;

/// What a locally built reply depends on, besides the static hosts, as bytes: transport, RD
/// and CD, EDNS presence and the UDP size allowed, then the question section exactly as sent
/// (name uncompressed, in the query's own case; type; class). Bytes, so a look-up borrows a
/// reused buffer instead of allocating.
pub type CacheKey = Box<[u8]>;

/// Writes the key of a plain one-question QUERY into `key` (cleared first) and returns true;
/// false for anything else (which then takes the normal path): responses, other opcodes,
/// compressed names, records besides one OPT, EDNS versions above 0, trailing bytes.
pub fn cache_key_into(request: &[u8], tcp: bool, key: &mut Vec<u8>) -> bool {
    key.clear();
    if request.len() < HEADER_LEN + 5 || request[2] & 0xf8 != 0 {
        return false;
    }
    let count = |i: usize| u16::from_be_bytes([request[i], request[i + 1]]);
    if count(4) != 1 || count(6) != 0 || count(8) != 0 || count(10) > 1 {
        return false;
    }
    let mut at = HEADER_LEN;
    loop {
        let Some(&len) = request.get(at) else {
            return false;
        };
        let len = usize::from(len);
        if len == 0 {
            at += 1;
            break;
        }
        if len > 63 || at - HEADER_LEN + len > 254 {
            return false;
        }
        at += 1 + len;
    }
    let question_end = at + 4;
    let Some(question) = request.get(HEADER_LEN..question_end) else {
        return false;
    };
    let edns_limit = if count(10) == 1 {
        // Root owner, type OPT, class = UDP size, TTL = ext rcode, version, flags; rdata.
        let Some(opt) = request.get(question_end..question_end + 11) else {
            return false;
        };
        if opt[0] != 0 || opt[1..3] != [0, 41] || opt[6] != 0 {
            return false;
        }
        let rdlen = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
        if request.len() != question_end + 11 + rdlen {
            return false;
        }
        let size = u16::from_be_bytes([opt[3], opt[4]]);
        size.clamp(UDP_REPLY_LIMIT as u16, EDNS_UDP_LIMIT as u16)
    } else {
        if request.len() != question_end {
            return false;
        }
        0
    };
    key.push(u8::from(tcp));
    key.push((request[2] & 0x01) | (request[3] & 0x10));
    key.extend_from_slice(&edns_limit.to_be_bytes());
    key.extend_from_slice(question);
    true
}

/// [`cache_key_into`] with a fresh buffer.
pub fn cache_key(request: &[u8], tcp: bool) -> Option<CacheKey> {
    let mut key = Vec::with_capacity(request.len());
    cache_key_into(request, tcp, &mut key).then(|| key.into_boxed_slice())
}

#[derive(Debug)]
struct Cached {
    reply: Vec<u8>,
    stored: Instant,
    generation: u64,
}

/// The cache; shared by the UDP and TCP paths.
#[derive(Debug, Default)]
pub struct ReplyCache {
    entries: Mutex<HashMap<CacheKey, Cached>>,
}

impl ReplyCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Cached>> {
        // Each critical section is one map operation: a poisoned lock holds consistent data.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached reply for `key`, with `id` in place, if it is fresh and was built from the
    /// static hosts of `generation`.
    pub fn get(&self, key: &[u8], id: [u8; 2], generation: u64, now: Instant) -> Option<Vec<u8>> {
        let mut reply = Vec::new();
        self.batch(generation, now)
            .reply_into(key, id, &mut reply)
            .then_some(reply)
    }

    /// Holds the cache for a batch of look-ups made at `now` against `generation`: one lock
    /// and one clock reading per batch of datagrams rather than per query.
    pub fn batch(&self, generation: u64, now: Instant) -> Batch<'_> {
        Batch {
            entries: self.lock(),
            generation,
            now,
        }
    }

    /// Remembers a reply built locally. When the cache is full, expired entries go first; if
    /// it is still full, the reply is simply not cached.
    pub fn put(&self, key: CacheKey, reply: &[u8], generation: u64, now: Instant) {
        if reply.len() < HEADER_LEN {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= REPLY_CACHE_MAX && !entries.contains_key(&*key) {
            entries.retain(|_, c| {
                c.generation == generation
                    && now.saturating_duration_since(c.stored) < REPLY_CACHE_TTL
            });
            if entries.len() >= REPLY_CACHE_MAX {
                return;
            }
        }
        entries.insert(
            key,
            Cached {
                reply: reply.to_vec(),
                stored: now,
                generation,
            },
        );
    }

    /// Entries held (fresh or not).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The locked cache for a batch of look-ups (see [`ReplyCache::batch`]); hold it briefly.
pub struct Batch<'a> {
    entries: std::sync::MutexGuard<'a, HashMap<CacheKey, Cached>>,
    generation: u64,
    now: Instant,
}

impl Batch<'_> {
    /// Writes the fresh cached reply for `key`, with `id` in place, into `out` (replacing what
    /// it held, reusing its allocation) and returns true; false when there is none.
    pub fn reply_into(&self, key: &[u8], id: [u8; 2], out: &mut Vec<u8>) -> bool {
        let Some(cached) = self.entries.get(key) else {
            return false;
        };
        if cached.generation != self.generation
            || self.now.saturating_duration_since(cached.stored) >= REPLY_CACHE_TTL
        {
            return false;
        }
        out.clear();
        out.extend_from_slice(&cached.reply);
        // put() keeps only replies of at least a header, so this always matches.
        if let Some(head) = out.get_mut(..2) {
            head.copy_from_slice(&id);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn query(id: u16, name: &str, edns: Option<u16>) -> Vec<u8> {
        let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            msg.set_edns(e);
        }
        msg.to_vec().unwrap()
    }

    #[test]
    fn keys_separate_what_changes_the_reply() {
        let a = cache_key(&query(1, "a.example.", None), false).unwrap();
        assert_eq!(
            a,
            cache_key(&query(2, "a.example.", None), false).unwrap(),
            "id is not in the key"
        );
        assert_ne!(
            a,
            cache_key(&query(1, "A.example.", None), false).unwrap(),
            "case is"
        );
        assert_ne!(
            a,
            cache_key(&query(1, "a.example.", Some(1232)), false).unwrap()
        );
        assert_ne!(a, cache_key(&query(1, "a.example.", None), true).unwrap());
        assert_eq!(
            cache_key(&query(1, "a.example.", Some(4096)), false).unwrap(),
            cache_key(&query(1, "a.example.", Some(1232)), false).unwrap(),
            "sizes above the cap are the same"
        );
        let mut response = query(1, "a.example.", None);
        response[2] |= 0x80;
        assert!(cache_key(&response, false).is_none());
        let mut trailing = query(1, "a.example.", None);
        trailing.push(0);
        assert!(cache_key(&trailing, false).is_none());
        assert!(cache_key(&[0; 5], false).is_none());
    }

    #[test]
    fn entries_expire_are_bounded_and_follow_the_hosts_generation() {
        let cache = ReplyCache::default();
        let t0 = Instant::now();
        let key = cache_key(&query(1, "a.example.", None), false).unwrap();
        cache.put(
            key.clone(),
            &[0xaa, 0xbb, 0x81, 0x80, 0, 0, 0, 0, 0, 0, 0, 0],
            7,
            t0,
        );
        let hit = cache.get(&key, [0x12, 0x34], 7, t0).unwrap();
        assert_eq!(&hit[..4], &[0x12, 0x34, 0x81, 0x80]);
        assert!(cache.get(&key, [0, 0], 8, t0).is_none(), "hosts edited");
        assert!(
            cache.get(&key, [0, 0], 7, t0 + REPLY_CACHE_TTL).is_none(),
            "expired"
        );
        for i in 0..REPLY_CACHE_MAX + 10 {
            let k = cache_key(&query(1, &format!("n{i}.example."), None), false).unwrap();
            cache.put(k, &[0; 12], 7, t0);
        }
        assert!(cache.len() <= REPLY_CACHE_MAX);
        // Once they expire, new names get in again.
        let late = cache_key(&query(1, "late.example.", None), false).unwrap();
        cache.put(late.clone(), &[0; 12], 7, t0 + REPLY_CACHE_TTL);
        assert!(cache.get(&late, [0, 0], 7, t0 + REPLY_CACHE_TTL).is_some());
        assert!(cache.len() <= REPLY_CACHE_MAX);
    }

    #[test]
    fn batch_lookups_reuse_the_buffer_and_apply_the_same_rules() {
        let cache = ReplyCache::default();
        let t0 = Instant::now();
        let key = cache_key(&query(1, "a.example.", None), false).unwrap();
        let other = cache_key(&query(1, "b.example.", None), false).unwrap();
        cache.put(
            key.clone(),
            &[0xaa, 0xbb, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0],
            3,
            t0,
        );
        let mut out = vec![9; 40];
        let capacity = out.capacity();
        {
            let batch = cache.batch(3, t0);
            assert!(batch.reply_into(&key, [0x12, 0x34], &mut out));
            assert_eq!(out, [0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0]);
            assert_eq!(out.capacity(), capacity, "no new allocation");
            assert!(batch.reply_into(&key, [0x56, 0x78], &mut out));
            assert_eq!(&out[..2], &[0x56, 0x78], "each query gets its own id");
            out.clear();
            assert!(!batch.reply_into(&other, [0, 0], &mut out), "unknown name");
            assert!(out.is_empty(), "a miss leaves the buffer alone");
        }
        assert!(
            !cache.batch(4, t0).reply_into(&key, [0, 0], &mut out),
            "hosts edited"
        );
        assert!(
            !cache
                .batch(3, t0 + REPLY_CACHE_TTL)
                .reply_into(&key, [0, 0], &mut out),
            "expired"
        );
        // The lock is released with the batch: the cache is usable again.
        cache.put(other.clone(), &[0; 12], 3, t0);
        assert_eq!(cache.len(), 2);
    }
}
