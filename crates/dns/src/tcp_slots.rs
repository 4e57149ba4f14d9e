//! The TCP connection table: at most `limit` connections, and when it is full a new client is
//! admitted by closing the connection that has waited longest for its next query. Idle clients
//! (2000 of them, or any number) therefore cannot lock out a new one until their idle timeout;
//! a connection busy with a query is never the one closed while an idle one exists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

#[derive(Debug)]
struct Entry {
    /// Since when the connection has been waiting for its next query; `None` while it reads
    /// one.
    idle_since: Option<Instant>,
    evict: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    entries: HashMap<u64, Entry>,
}

/// What [`TcpSlots::admit`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// There was room.
    Free,
    /// The longest-idle connection (idle for this long) was told to close.
    Evicted(std::time::Duration),
    /// Every connection is busy reading a query: the new one is refused.
    Full,
}

/// The table shared by the accept loop and the connections.
#[derive(Debug)]
pub struct TcpSlots {
    limit: usize,
    table: Mutex<Table>,
}

/// One admitted connection; leaves the table when dropped.
#[derive(Debug)]
pub struct Slot {
    id: u64,
    slots: Arc<TcpSlots>,
    evict: Arc<Notify>,
}

impl TcpSlots {
    /// A table of at most `limit` connections (at least one).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            table: Mutex::new(Table::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Each critical section is a few map operations: a poisoned lock holds consistent data.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection, evicting the longest-idle one if the table is full.
    pub fn admit(self: &Arc<Self>, now: Instant) -> (Option<Slot>, Admission) {
        let mut table = self.lock();
        let mut admission = Admission::Free;
        if table.entries.len() >= self.limit {
            let oldest = table
                .entries
                .iter()
                .filter_map(|(id, e)| e.idle_since.map(|t| (*id, t)))
                .min_by_key(|(_, t)| *t);
            let Some((victim, since)) = oldest else {
                return (None, Admission::Full);
            };
            if let Some(entry) = table.entries.remove(&victim) {
                // Stored as a permit if the connection is not waiting right now.
                entry.evict.notify_one();
            }
            admission = Admission::Evicted(now.saturating_duration_since(since));
        }
        let id = table.next_id;
        table.next_id += 1;
        let evict = Arc::new(Notify::new());
        table.entries.insert(
            id,
            Entry {
                idle_since: Some(now),
                evict: evict.clone(),
            },
        );
        let slot = Slot {
            id,
            slots: self.clone(),
            evict,
        };
        (Some(slot), admission)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

impl Slot {
    /// The connection now waits for its next query.
    pub fn idle(&self, now: Instant) {
        if let Some(e) = self.slots.lock().entries.get_mut(&self.id) {
            e.idle_since = Some(now);
        }
    }

    /// The connection is reading a query: not to be evicted meanwhile.
    pub fn busy(&self) {
        if let Some(e) = self.slots.lock().entries.get_mut(&self.id) {
            e.idle_since = None;
        }
    }

    /// Completes when this connection was evicted to make room for a new one.
    pub async fn evicted(&self) {
        self.evict.notified().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().entries.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn full_table_evicts_the_longest_idle() {
        let t0 = Instant::now();
        let slots = TcpSlots::new(3);
        let (a, _) = slots.admit(t0);
        let (b, _) = slots.admit(t0 + Duration::from_secs(1));
        let (c, _) = slots.admit(t0 + Duration::from_secs(2));
        let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
        // a became active again later than b: b is now the longest idle.
        a.idle(t0 + Duration::from_secs(3));
        let (d, how) = slots.admit(t0 + Duration::from_secs(4));
        assert!(d.is_some());
        assert_eq!(how, Admission::Evicted(Duration::from_secs(3)));
        assert_eq!(slots.len(), 3);
        // b's eviction is pending (a permit), a's and c's are not.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(10), b.evicted())
                .await
                .expect("b evicted");
            assert!(
                tokio::time::timeout(Duration::from_millis(10), a.evicted())
                    .await
                    .is_err(),
                "a kept"
            );
        });
        drop(b);
        assert_eq!(slots.len(), 3, "b was already out of the table");
        drop(c);
        assert_eq!(slots.len(), 2);
    }

    #[test]
    fn busy_connections_are_not_evicted() {
        let t0 = Instant::now();
        let slots = TcpSlots::new(2);
        let (a, _) = slots.admit(t0);
        let (b, _) = slots.admit(t0);
        let (a, b) = (a.unwrap(), b.unwrap());
        a.busy();
        b.busy();
        let (none, how) = slots.admit(t0);
        assert!(none.is_none());
        assert_eq!(how, Admission::Full);
        b.idle(t0 + Duration::from_secs(1));
        let (c, how) = slots.admit(t0 + Duration::from_secs(2));
        assert!(c.is_some());
        assert_eq!(how, Admission::Evicted(Duration::from_secs(1)));
        drop(a);
    }
}
