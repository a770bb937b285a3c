//! What a run measures: end-to-end latency in HDR histograms (one per worker thread, merged on
//! read), counters, per-channel delivery tracking (loss, duplicates, order) and the server's RSS
//! and CPU from `/proc`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::time::Instant;

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// The run's clock origin: payload timestamps are µs since this instant.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// µs since [`epoch`].
pub fn now_us() -> u64 {
    u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 10 min, three significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

type Shard = Arc<Mutex<Histogram<u64>>>;

fn shards() -> &'static Mutex<Vec<Shard>> {
    static SHARDS: OnceLock<Mutex<Vec<Shard>>> = OnceLock::new();
    SHARDS.get_or_init(|| Mutex::new(Vec::new()))
}

thread_local! {
    static LOCAL: Shard = {
        let shard = Arc::new(Mutex::new(new_histogram()));
        shards().lock().push(shard.clone());
        shard
    };
}

/// Records one latency, in µs, into this thread's histogram.
pub fn record_latency(us: u64) {
    LOCAL.with(|h| h.lock().saturating_record(us.max(1)));
}

/// Merges every thread's histogram and resets them: the latencies since the last call.
pub fn take_latencies() -> Histogram<u64> {
    let mut total = new_histogram();
    for shard in shards().lock().iter() {
        let mut h = shard.lock();
        // Same bounds everywhere, so adding cannot fail.
        let _ = total.add(&*h);
        h.reset();
    }
    total
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    /// Reads a histogram of µs.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Run-wide counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Publishes written to a socket.
    pub published: AtomicU64,
    /// Load-generator messages received.
    pub delivered: AtomicU64,
    /// Errors reported by the system, failed connects and dropped connections.
    pub errors: AtomicU64,
    /// Connections open and subscribed.
    pub ready: AtomicU64,
    /// Publishes the system refused (an error echoing the publish's id): never stored, so they
    /// are not losses.
    pub refused: AtomicU64,
    /// Subscriptions with a `since` the system did not honour (`recovered: false`).
    pub not_recovered: AtomicU64,
    /// The first error messages, for the report.
    pub samples: Mutex<Vec<String>>,
}

impl Counters {
    /// Counts an error and keeps the first few messages.
    pub fn error(&self, message: impl Into<String>) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.samples.lock();
        if samples.len() < 8 {
            let message = message.into();
            tracing::warn!("{message}");
            samples.push(message);
        }
    }

    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// What one subscriber received on one channel: which sequence numbers (a bitset), how many
/// arrived twice, and how many arrived before an earlier one from the same publisher.
#[derive(Debug, Default)]
pub struct Tracker {
    bits: Vec<u64>,
    distinct: u64,
    /// Sequence numbers below this have all arrived.
    prefix: u64,
    /// Deliveries of a sequence number already received.
    pub duplicated: u64,
    /// Deliveries older than the newest already received from the same publisher.
    pub out_of_order: u64,
    newest_by_publisher: Vec<(u32, u64)>,
}

impl Tracker {
    /// Notes the arrival of `seq` from `publisher`.
    pub fn note(&mut self, publisher: u32, seq: u64) {
        let word = usize::try_from(seq / 64).unwrap_or(usize::MAX);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let bit = 1u64 << (seq % 64);
        if self.bits[word] & bit != 0 {
            self.duplicated += 1;
            return;
        }
        self.bits[word] |= bit;
        self.distinct += 1;
        while self.has(self.prefix) {
            self.prefix += 1;
        }
        match self
            .newest_by_publisher
            .iter_mut()
            .find(|(p, _)| *p == publisher)
        {
            Some((_, newest)) if seq < *newest => self.out_of_order += 1,
            Some((_, newest)) => *newest = seq,
            None => self.newest_by_publisher.push((publisher, seq)),
        }
    }

    fn has(&self, seq: u64) -> bool {
        let word = usize::try_from(seq / 64).unwrap_or(usize::MAX);
        self.bits
            .get(word)
            .is_some_and(|w| w & (1u64 << (seq % 64)) != 0)
    }

    /// Distinct sequence numbers received.
    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    /// Every sequence number below this has arrived.
    pub fn prefix(&self) -> u64 {
        self.prefix
    }

    /// Whether a sequence number below `upto` has not arrived, apart from those the system
    /// refused (`refused`): only the numbers past [`Self::prefix`] need looking at.
    pub fn behind(&self, upto: u64, refused: &std::collections::BTreeSet<u64>) -> bool {
        (self.prefix..upto).any(|s| !self.has(s) && !refused.contains(&s))
    }

    /// Sequence numbers below `published` that never arrived, apart from those the system
    /// refused (`refused`: never stored, so nobody could receive them).
    pub fn missing(&self, published: u64, refused: &std::collections::BTreeSet<u64>) -> u64 {
        (0..published)
            .filter(|s| !self.has(*s) && !refused.contains(s))
            .count() as u64
    }
}

/// The processes of the system under test, read from `/proc`.
#[derive(Clone, Debug, Default)]
pub struct ProcSet {
    /// Their pids.
    pub pids: Vec<i32>,
    /// Those of them that are the broker behind a cluster (its Redis), whose CPU is also
    /// reported on its own.
    pub broker: Vec<i32>,
}

/// One reading of a [`ProcSet`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// Sum of resident set sizes, bytes.
    pub rss: u64,
    /// Sum of user and system CPU time, seconds.
    pub cpu_seconds: f64,
    /// The part of it the broker's processes used, seconds.
    pub broker_cpu_seconds: f64,
    /// When it was read.
    pub at: Option<Instant>,
}

impl ProcSet {
    /// Reads RSS and CPU time of every process (a vanished process counts as zero).
    pub fn sample(&self) -> ProcSample {
        let page = procfs::page_size();
        let ticks = procfs::ticks_per_second() as f64;
        let mut s = ProcSample {
            at: Some(Instant::now()),
            ..ProcSample::default()
        };
        for pid in &self.pids {
            if let Ok(stat) = procfs::process::Process::new(*pid).and_then(|p| p.stat()) {
                let cpu = (stat.utime + stat.stime) as f64 / ticks;
                s.rss += stat.rss * page;
                s.cpu_seconds += cpu;
                if self.broker.contains(pid) {
                    s.broker_cpu_seconds += cpu;
                }
            }
        }
        s
    }
}

impl ProcSample {
    /// CPU cores used on average between `earlier` and this sample.
    pub fn cores_since(&self, earlier: &ProcSample) -> f64 {
        self.rate_since(earlier, self.cpu_seconds - earlier.cpu_seconds)
    }

    /// CPU cores the broker's processes used on average between `earlier` and this sample.
    pub fn broker_cores_since(&self, earlier: &ProcSample) -> f64 {
        self.rate_since(
            earlier,
            self.broker_cpu_seconds - earlier.broker_cpu_seconds,
        )
    }

    fn rate_since(&self, earlier: &ProcSample, seconds: f64) -> f64 {
        match (self.at, earlier.at) {
            (Some(a), Some(b)) if a > b => seconds / (a - b).as_secs_f64(),
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tracker_counts_missing_duplicated_and_reordered() {
        let mut t = Tracker::default();
        for s in [0, 1, 3, 3, 2, 70] {
            t.note(1, s);
        }
        assert_eq!(t.distinct(), 5);
        assert_eq!(t.duplicated, 1);
        assert_eq!(t.out_of_order, 1, "2 arrived after 3");
        assert_eq!(t.prefix(), 4);
        assert_eq!(t.missing(71, &Default::default()), 71 - 5);
        // What the system refused was never stored: not missing.
        let refused = [4, 5, 6].into_iter().collect();
        assert_eq!(t.missing(71, &refused), 71 - 5 - 3);
        // Caught up to 7 once 4 to 6 are refused, not to 8 (7 never arrived).
        assert!(!t.behind(4, &Default::default()));
        assert!(t.behind(5, &Default::default()));
        assert!(!t.behind(7, &refused));
        assert!(t.behind(8, &refused));
    }

    #[test]
    fn latencies_from_every_thread_are_merged_and_reset() {
        record_latency(1000);
        std::thread::spawn(|| record_latency(3000))
            .join()
            .expect("thread");
        let h = take_latencies();
        assert!(h.len() >= 2);
        assert!(h.max() >= 2990);
        assert!(take_latencies().len() < h.len());
    }

    #[test]
    fn this_process_has_a_resident_set() {
        let set = ProcSet {
            pids: vec![i32::try_from(std::process::id()).expect("pid")],
            broker: Vec::new(),
        };
        let s = set.sample();
        assert!(s.rss > 1 << 20, "rss {}", s.rss);
    }
}
