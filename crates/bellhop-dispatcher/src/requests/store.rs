//! Where service requests and their escalation timers live: the [`RequestStore`] trait, kept
//! apart from [`Broker`](crate::Broker) so the broker stays about channels, and the embedded
//! implementation ([`MemoryRequestStore`]). The Redis one is in `redis.rs` beside it.
//!
//! Semantics every store keeps: an update is a compare-and-set on the request's version, so two
//! nodes changing one request never lose a change; a due timer is handed to one caller at a time
//! ([`RequestStore::claim_due`] moves it `lease` into the future atomically), and only
//! [`RequestStore::confirm`] records a level as done, so a caller that dies after its claim
//! leaves the level to be claimed again once the lease ends.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::state::{ServiceRequest, Status};
use crate::broker::BrokerError;

/// Most requests a list returns.
pub const MAX_LIST: usize = 500;

/// A request and the version a compare-and-set must name.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned {
    /// The request (its `level` and `escalated_at_ms` as the timers left them).
    pub request: ServiceRequest,
    /// Bumped by every write.
    pub version: u64,
}

/// What a list asks for; `None` matches anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this status.
    pub status: Option<Status>,
    /// Only this department.
    pub department: Option<String>,
    /// Only this room.
    pub room: Option<String>,
    /// At most this many, newest first (capped at [`MAX_LIST`]).
    pub limit: usize,
}

impl Filter {
    /// Whether `r` passes.
    pub fn accepts(&self, r: &ServiceRequest) -> bool {
        self.status.is_none_or(|s| s == r.status)
            && self.department.as_ref().is_none_or(|d| *d == r.department)
            && self
                .room
                .as_ref()
                .is_none_or(|room| r.room.as_ref() == Some(room))
    }
}

/// A due escalation handed to one caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    /// The request as it is now.
    pub request: ServiceRequest,
    /// The level this escalation raises it to.
    pub level: u32,
}

/// Storage of service requests and escalation timers. Every method is safe to call
/// concurrently, from any number of nodes sharing the store.
#[async_trait]
pub trait RequestStore: Send + Sync + fmt::Debug + 'static {
    /// Stores a new request, with its first escalation `due` (ms since the epoch), unless one
    /// with its id exists: false then.
    async fn insert(&self, request: &ServiceRequest, due: Option<u64>)
        -> Result<bool, BrokerError>;

    /// The request `id` of `property`.
    async fn get(&self, property: &str, id: &str) -> Result<Option<Versioned>, BrokerError>;

    /// Replaces `current` with `next` if nobody wrote it since `current` was read, and sets its
    /// next escalation (`None`: never). False when it changed meanwhile (read it again).
    async fn replace(
        &self,
        current: &Versioned,
        next: &ServiceRequest,
        due: Option<u64>,
    ) -> Result<bool, BrokerError>;

    /// Requests of `property` passing `filter`, newest first.
    async fn list(
        &self,
        property: &str,
        filter: &Filter,
    ) -> Result<Vec<ServiceRequest>, BrokerError>;

    /// Up to `limit` open requests whose escalation is due at `now`, each handed to this caller
    /// alone: its timer moves to `now + lease`.
    async fn claim_due(
        &self,
        now: u64,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Claim>, BrokerError>;

    /// Records the claimed level as escalated at `now` (if no other caller did already) and
    /// sets the next escalation (`None`: never).
    async fn confirm(&self, claim: &Claim, now: u64, next: Option<u64>) -> Result<(), BrokerError>;
}

/// One stored request.
#[derive(Debug)]
struct Entry {
    request: ServiceRequest,
    version: u64,
    due: Option<u64>,
}

/// The embedded store's state.
#[derive(Debug, Default)]
struct State {
    entries: HashMap<(String, String), Entry>,
    /// (due, property, id), earliest first.
    due: BTreeSet<(u64, String, String)>,
    /// When expired requests were last dropped.
    swept_at: u64,
}

impl State {
    fn set_due(&mut self, key: &(String, String), due: Option<u64>) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if let Some(old) = entry.due.take() {
            self.due.remove(&(old, key.0.clone(), key.1.clone()));
        }
        if let Some(at) = due {
            entry.due = Some(at);
            self.due.insert((at, key.0.clone(), key.1.clone()));
        }
    }

    /// Drops requests opened before `now - retention`.
    fn sweep(&mut self, now: u64, retention: u64) {
        let cutoff = now.saturating_sub(retention);
        let old: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, e)| e.request.opened_at_ms < cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        for key in old {
            self.set_due(&key, None);
            self.entries.remove(&key);
        }
        self.swept_at = now;
    }
}

/// The embedded store: one node's memory, the same semantics as Redis.
#[derive(Debug)]
pub struct MemoryRequestStore {
    state: Mutex<State>,
    /// How long a request is kept after it was opened (ms).
    retention_ms: u64,
}

impl MemoryRequestStore {
    /// A store keeping requests for `retention` after they were opened.
    pub fn new(retention: Duration) -> Self {
        MemoryRequestStore {
            state: Mutex::new(State::default()),
            retention_ms: retention.as_millis().min(u64::MAX as u128) as u64,
        }
    }
}

fn key(property: &str, id: &str) -> (String, String) {
    (property.to_owned(), id.to_owned())
}

#[async_trait]
impl RequestStore for MemoryRequestStore {
    async fn insert(
        &self,
        request: &ServiceRequest,
        due: Option<u64>,
    ) -> Result<bool, BrokerError> {
        let mut state = self.state.lock();
        let k = key(&request.property, &request.id);
        if state.entries.contains_key(&k) {
            return Ok(false);
        }
        state.entries.insert(
            k.clone(),
            Entry {
                request: request.clone(),
                version: 1,
                due: None,
            },
        );
        state.set_due(&k, due);
        Ok(true)
    }

    async fn get(&self, property: &str, id: &str) -> Result<Option<Versioned>, BrokerError> {
        let state = self.state.lock();
        Ok(state.entries.get(&key(property, id)).map(|e| Versioned {
            request: e.request.clone(),
            version: e.version,
        }))
    }

    async fn replace(
        &self,
        current: &Versioned,
        next: &ServiceRequest,
        due: Option<u64>,
    ) -> Result<bool, BrokerError> {
        let mut state = self.state.lock();
        let k = key(&current.request.property, &current.request.id);
        let Some(entry) = state.entries.get_mut(&k) else {
            return Ok(false);
        };
        if entry.version != current.version {
            return Ok(false);
        }
        // The timers own the level: keep what they recorded.
        let (level, escalated) = (entry.request.level, entry.request.escalated_at_ms);
        entry.request = next.clone();
        entry.request.level = level;
        entry.request.escalated_at_ms = escalated;
        entry.version += 1;
        state.set_due(&k, due);
        Ok(true)
    }

    async fn list(
        &self,
        property: &str,
        filter: &Filter,
    ) -> Result<Vec<ServiceRequest>, BrokerError> {
        let state = self.state.lock();
        let mut found: Vec<&ServiceRequest> = state
            .entries
            .iter()
            .filter(|((p, _), e)| p == property && filter.accepts(&e.request))
            .map(|(_, e)| &e.request)
            .collect();
        found.sort_by(|a, b| (b.opened_at_ms, &b.id).cmp(&(a.opened_at_ms, &a.id)));
        Ok(found
            .into_iter()
            .take(filter.limit.min(MAX_LIST))
            .cloned()
            .collect())
    }

    async fn claim_due(
        &self,
        now: u64,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Claim>, BrokerError> {
        let mut state = self.state.lock();
        if now.saturating_sub(state.swept_at) >= 60_000 {
            state.sweep(now, self.retention_ms);
        }
        let due: Vec<(u64, String, String)> = state
            .due
            .iter()
            .take_while(|(at, _, _)| *at <= now)
            .take(limit)
            .cloned()
            .collect();
        let lease_until = now.saturating_add(lease.as_millis() as u64);
        let mut claims = Vec::with_capacity(due.len());
        for (_, property, id) in due {
            let k = (property, id);
            let Some(entry) = state.entries.get(&k) else {
                continue;
            };
            if entry.request.status != Status::Open {
                state.set_due(&k, None);
                continue;
            }
            let claim = Claim {
                request: entry.request.clone(),
                level: entry.request.level + 1,
            };
            state.set_due(&k, Some(lease_until));
            claims.push(claim);
        }
        Ok(claims)
    }

    async fn confirm(&self, claim: &Claim, now: u64, next: Option<u64>) -> Result<(), BrokerError> {
        let mut state = self.state.lock();
        let k = key(&claim.request.property, &claim.request.id);
        let Some(entry) = state.entries.get_mut(&k) else {
            return Ok(());
        };
        if entry.request.level < claim.level {
            entry.request.level = claim.level;
            entry.request.escalated_at_ms = Some(now);
            entry.version += 1;
        }
        let next = next.filter(|_| entry.request.status == Status::Open);
        state.set_due(&k, next);
        Ok(())
    }
}
