//! The books of a fault-injection run: what the publisher sent and was acknowledged, what each
//! subscriber received, and the figures that say whether the delivery guarantee held (nothing
//! acknowledged lost, nothing duplicated, each channel in offset order).
//!
//! Messages are told apart by the `messageId` the server gave them and, for the reader, by the
//! number `n` the publisher put in the payload (`{"n": n}`). A publish that failed and was
//! retried can still have been stored (Redis applied it, then the connection died before the
//! answer): the retry is then a second message with its own `messageId` (there is no idempotent
//! publish yet, docs/PROTOCOL.md). Such a message is *ambiguous*, not a duplicate: it is
//! counted apart, and each one must belong to a number that had a failed attempt.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use tokio::sync::watch;

/// An offset (`<ms>-<seq>`), ordered like the server orders them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset {
    /// Milliseconds.
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl Offset {
    /// Parses `<ms>-<seq>`; panics on anything else (the server sent a malformed offset).
    pub fn parse(text: &str) -> Offset {
        let parsed = text
            .split_once('-')
            .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)));
        match parsed {
            Some((ms, seq)) => Offset { ms, seq },
            None => panic!("not an offset: {text:?}"),
        }
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One acknowledged publish.
#[derive(Clone, Debug)]
pub struct Ack {
    /// The publisher's number for the message (its payload's `n`).
    pub n: u64,
    /// Where it was published.
    pub channel: String,
    /// The id the server gave it.
    pub message_id: String,
    /// Where it was stored.
    pub offset: Offset,
}

/// One `message` frame a subscriber received.
#[derive(Clone, Debug)]
pub struct Received {
    /// The channel.
    pub channel: String,
    /// Its offset.
    pub offset: Offset,
    /// Its `messageId`.
    pub message_id: String,
    /// The payload's `n`, when it has one.
    pub n: Option<u64>,
}

/// How far the publisher got, for a fault injector to act on ([`PublishLog::progress`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Messages acknowledged.
    pub acked: u64,
    /// Failed attempts.
    pub failed: u64,
}

/// What the publisher did: every message it set out to send, each failed attempt, each ack.
#[derive(Debug)]
pub struct PublishLog {
    /// Messages the publisher set out to send (each retried until acknowledged).
    pub published: u64,
    /// Acknowledgements, in the order they arrived.
    pub acks: Vec<Ack>,
    /// Failed attempts per message number.
    pub failures: HashMap<u64, u32>,
    /// How long the slowest failed attempt took to fail (request sent to error received).
    pub slowest_failure: Duration,
    /// Every failure's error code and message, for the report (`unavailable: redis: ...`).
    pub failure_reasons: Vec<String>,
    /// Tells watchers of every ack and failure.
    progress: watch::Sender<Progress>,
}

impl Default for PublishLog {
    fn default() -> Self {
        PublishLog {
            published: 0,
            acks: Vec::new(),
            failures: HashMap::new(),
            slowest_failure: Duration::ZERO,
            failure_reasons: Vec::new(),
            progress: watch::channel(Progress::default()).0,
        }
    }
}

impl PublishLog {
    /// Follows the publisher's progress: updated on every ack and every failed attempt.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    fn tell(&self) {
        self.progress.send_replace(Progress {
            acked: self.acks.len() as u64,
            failed: self.failed_attempts(),
        });
    }

    /// A message the publisher is about to send for the first time.
    pub fn start(&mut self) {
        self.published += 1;
    }

    /// An attempt to publish message `n` failed after `took`.
    pub fn failed(&mut self, n: u64, took: Duration, reason: String) {
        *self.failures.entry(n).or_default() += 1;
        self.slowest_failure = self.slowest_failure.max(took);
        self.failure_reasons.push(reason);
        self.tell();
    }

    /// Message `n` was acknowledged.
    pub fn acked(&mut self, ack: Ack) {
        assert!(
            self.acks.iter().all(|a| a.n != ack.n),
            "message {} acknowledged twice",
            ack.n
        );
        self.acks.push(ack);
        self.tell();
    }

    /// Failed attempts in all.
    pub fn failed_attempts(&self) -> u64 {
        self.failures.values().map(|&n| u64::from(n)).sum()
    }

    /// The newest acknowledged offset of each channel: a subscriber that reached these has
    /// everything.
    pub fn targets(&self) -> HashMap<String, Offset> {
        let mut targets: HashMap<String, Offset> = HashMap::new();
        for ack in &self.acks {
            let top = targets.entry(ack.channel.clone()).or_insert(ack.offset);
            *top = (*top).max(ack.offset);
        }
        targets
    }
}

/// The figures of one run; [`Figures::assert_clean`] checks the guarantee.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// Messages the publisher set out to send.
    pub published: u64,
    /// Messages acknowledged (each once, however many attempts it took).
    pub acked: u64,
    /// Failed publish attempts (each retried).
    pub failed_attempts: u64,
    /// Subscribers whose receipts were checked.
    pub subscribers: u64,
    /// `message` frames received, all subscribers together.
    pub delivered: u64,
    /// Acknowledged messages a subscriber never received, all subscribers together.
    pub lost: u64,
    /// Extra receipts of a message (same `messageId`) a subscriber had already received.
    pub duplicated: u64,
    /// Receipts whose offset was not above the previous one on the same channel.
    pub out_of_order: u64,
    /// Stored messages whose publish failed (the answer was lost), distinct, all subscribers
    /// together: the documented price of retrying without idempotent publishes.
    pub ambiguous: u64,
    /// Received messages that were neither acknowledged nor explained by a failed attempt.
    pub unexplained: u64,
    /// Acknowledged messages that were stored out of the publisher's order on their channel
    /// (a sequential publisher's acks must have increasing offsets per channel).
    pub misordered_acks: u64,
    /// Human-readable details of every violation (the first few of each kind).
    pub problems: Vec<String>,
}

impl Figures {
    /// Checks every subscriber's receipts against the publisher's log.
    pub fn tally(log: &PublishLog, subscribers: &[&[Received]]) -> Figures {
        let mut f = Figures {
            published: log.published,
            acked: log.acks.len() as u64,
            failed_attempts: log.failed_attempts(),
            subscribers: subscribers.len() as u64,
            ..Figures::default()
        };
        let acked: HashMap<&str, &Ack> = log
            .acks
            .iter()
            .map(|a| (a.message_id.as_str(), a))
            .collect();
        let mut last_ack: HashMap<&str, Offset> = HashMap::new();
        for ack in &log.acks {
            if let Some(prev) = last_ack.insert(&ack.channel, ack.offset) {
                if ack.offset <= prev {
                    f.misordered_acks += 1;
                    f.note(format!(
                        "ack of n={} on {} has offset {} after {prev}",
                        ack.n, ack.channel, ack.offset
                    ));
                }
            }
        }
        let mut ambiguous: HashSet<&str> = HashSet::new();
        for (i, received) in subscribers.iter().enumerate() {
            f.delivered += received.len() as u64;
            let mut seen: HashMap<&str, u32> = HashMap::new();
            let mut last: BTreeMap<&str, Offset> = BTreeMap::new();
            for r in received.iter() {
                let count = seen.entry(&r.message_id).or_default();
                *count += 1;
                if *count > 1 {
                    f.duplicated += 1;
                    f.note(format!(
                        "subscriber {i}: {} at {} on {} received {count} times",
                        r.message_id, r.offset, r.channel
                    ));
                }
                if let Some(prev) = last.insert(&r.channel, r.offset) {
                    if r.offset <= prev {
                        f.out_of_order += 1;
                        f.note(format!(
                            "subscriber {i}: {} on {} after {prev}",
                            r.offset, r.channel
                        ));
                    }
                }
                if !acked.contains_key(r.message_id.as_str()) {
                    let explained =
                        r.n.is_some_and(|n| log.failures.get(&n).is_some_and(|&c| c > 0));
                    if explained {
                        ambiguous.insert(&r.message_id);
                    } else if *count == 1 {
                        f.unexplained += 1;
                        f.note(format!(
                            "subscriber {i}: {} (n={:?}) at {} on {} was never acknowledged \
                             and its number never failed",
                            r.message_id, r.n, r.offset, r.channel
                        ));
                    }
                }
            }
            for ack in &log.acks {
                if !seen.contains_key(ack.message_id.as_str()) {
                    f.lost += 1;
                    f.note(format!(
                        "subscriber {i}: lost n={} {} at {} on {}",
                        ack.n, ack.message_id, ack.offset, ack.channel
                    ));
                }
            }
        }
        f.ambiguous = ambiguous.len() as u64;
        f
    }

    fn note(&mut self, problem: String) {
        if self.problems.len() < 20 {
            self.problems.push(problem);
        }
    }

    /// The report line: `fault=<name> published=.. acked=.. delivered=.. lost=.. duplicated=..`
    /// and the rest of the figures, then `extra` (the case's own figures).
    pub fn line(&self, fault: &str, extra: &str) -> String {
        let mut line = format!(
            "fault={fault} published={} acked={} delivered={} lost={} duplicated={} \
             out_of_order={} subscribers={} failed_attempts={} ambiguous={}",
            self.published,
            self.acked,
            self.delivered,
            self.lost,
            self.duplicated,
            self.out_of_order,
            self.subscribers,
            self.failed_attempts,
            self.ambiguous,
        );
        if !extra.is_empty() {
            line.push(' ');
            line.push_str(extra);
        }
        line
    }

    /// Fails the test unless every acknowledged message reached every subscriber exactly once,
    /// in offset order, every message was acknowledged, and nothing unexplained arrived.
    pub fn assert_clean(&self) {
        let ok = self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.unexplained == 0
            && self.misordered_acks == 0
            && self.acked == self.published;
        assert!(ok, "delivery guarantee violated: {self:#?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(n: u64, channel: &str, ms: u64) -> Ack {
        Ack {
            n,
            channel: channel.into(),
            message_id: format!("m{n}"),
            offset: Offset { ms, seq: 0 },
        }
    }

    fn got(a: &Ack) -> Received {
        Received {
            channel: a.channel.clone(),
            offset: a.offset,
            message_id: a.message_id.clone(),
            n: Some(a.n),
        }
    }

    #[test]
    fn offsets_parse_and_order() {
        assert_eq!(Offset::parse("17-3"), Offset { ms: 17, seq: 3 });
        assert!(Offset::parse("17-3") < Offset::parse("17-10"));
        assert!(Offset::parse("9-10") < Offset::parse("10-0"));
        assert_eq!(Offset::parse("5-1").to_string(), "5-1");
    }

    #[test]
    fn a_clean_run_counts_clean() {
        let mut log = PublishLog::default();
        for n in 0..4 {
            log.start();
            log.acked(ack(n, if n % 2 == 0 { "a" } else { "b" }, 10 + n));
        }
        let received: Vec<Received> = log.acks.iter().map(got).collect();
        let f = Figures::tally(&log, &[&received, &received]);
        assert_eq!((f.acked, f.delivered, f.lost, f.duplicated), (4, 8, 0, 0));
        f.assert_clean();
        assert!(f.line("x", "k=1").starts_with(
            "fault=x published=4 acked=4 delivered=8 lost=0 duplicated=0 out_of_order=0"
        ));
    }

    #[test]
    fn losses_duplicates_disorder_and_ambiguity_are_counted() {
        let mut log = PublishLog::default();
        for _ in 0..3 {
            log.start();
        }
        log.failed(1, Duration::from_millis(7), "unavailable".into());
        log.acked(ack(0, "a", 10));
        log.acked(ack(1, "a", 12));
        log.acked(ack(2, "a", 13));
        let stored_twice = Received {
            channel: "a".into(),
            offset: Offset { ms: 11, seq: 0 },
            message_id: "first-try-of-1".into(),
            n: Some(1),
        };
        let stray = Received {
            message_id: "stray".into(),
            n: Some(0),
            offset: Offset { ms: 20, seq: 0 },
            ..stored_twice.clone()
        };
        let a = &log.acks;
        let one = vec![got(&a[0]), stored_twice, got(&a[1]), got(&a[1])];
        let two = vec![got(&a[2]), got(&a[0]), stray];
        let f = Figures::tally(&log, &[&one, &two]);
        assert_eq!(f.lost, 2, "{f:#?}"); // n=2 by the first, n=1 by the second
        assert_eq!(f.duplicated, 1, "{f:#?}");
        assert_eq!(f.out_of_order, 2, "{f:#?}"); // the duplicate, and 10 after 13
        assert_eq!(f.ambiguous, 1, "{f:#?}");
        assert_eq!(f.unexplained, 1, "{f:#?}");
        assert_eq!(f.failed_attempts, 1);
        assert_eq!(log.slowest_failure, Duration::from_millis(7));
    }
}
