//! Each connection's outbound queue: bounded, ordered by class (control replies first, then
//! urgent, high, normal and low messages, ephemeral notices last), with ephemeral frames dropped
//! first under pressure and the connection closed with 4008 when a message finds it full.
//!
//! Per-channel order is kept: a message that goes ahead of lower classes takes every queued
//! message of its own channel along with it (they are promoted into its class, in order), so
//! priority reorders channels relative to each other, never one channel's messages.
//!
//! Producers never block on a slow client: fan-out uses [`Outbound::push`], which fails instead
//! of waiting. Only the connection's own session waits for space ([`Outbound::send`]), which
//! turns a slow reader into TCP back-pressure on its own requests.
//!
//! Frames are queued as the bytes that go on the wire ([`WireFrame`]): a message fanned out to
//! many connections is one shared buffer in all their queues. The writer takes everything queued
//! at once ([`Outbound::next_batch`]), and is woken only when the queue goes from empty to
//! non-empty (or the connection starts closing, or tungstenite wrote a reply of its own).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};

use bellhop_protocol::{close, Priority};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::config::OutboundConfig;
use crate::frame::WireFrame;

/// Delivery classes, most urgent first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Replies, errors, pings: small, and the client is waiting for them.
    Control = 0,
    /// `urgent` messages.
    Urgent = 1,
    /// `high` messages.
    High = 2,
    /// `normal` messages.
    Normal = 3,
    /// `low` messages.
    Low = 4,
    /// Typing and presence notices: last, and dropped first.
    Ephemeral = 5,
}

impl Class {
    /// The class of a message of the given priority.
    pub fn of(priority: Priority) -> Class {
        match priority {
            Priority::Urgent => Class::Urgent,
            Priority::High => Class::High,
            Priority::Normal => Class::Normal,
            Priority::Low => Class::Low,
        }
    }
}

/// What became of a pushed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// It will be sent.
    Queued,
    /// It was ephemeral and the queue was full: dropped, nothing else changed.
    Dropped,
    /// The queue was full: the connection is now closing with 4008.
    Overflow,
    /// The connection is already closing.
    Closed,
}

/// What became of a frame given to [`Outbound::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// It will be sent.
    Queued,
    /// The connection is closing: it will not be.
    Closed,
    /// It is larger than the whole queue's byte budget and can never be sent.
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The queue's budget (`OutboundConfig::max_bytes`).
        limit: usize,
    },
}

/// Frames the reader's control replies may queue beyond the budget (see
/// [`Outbound::push_control`]).
const CONTROL_RESERVE_FRAMES: usize = 64;
/// Bytes the reader's control replies may queue beyond the budget.
const CONTROL_RESERVE_BYTES: usize = 64 << 10;

/// What the writer sends next (see [`Outbound::next_batch`]).
#[derive(Debug)]
pub enum Batch {
    /// The frames put in the caller's buffer (possibly none: tungstenite wrote something).
    Frames,
    /// The close frame; nothing follows it.
    Close(CloseFrame),
}

/// What the writer sends next, one frame at a time (the tests' view of the queue).
#[cfg(test)]
#[derive(Debug)]
pub enum Next {
    /// A frame.
    Frame(tokio_tungstenite::tungstenite::Message),
    /// The close frame; nothing follows it.
    Close(CloseFrame),
}

/// A queued frame and the channel it belongs to (0: none, e.g. replies and notices).
#[derive(Debug)]
struct Entry {
    /// Tag of the frame's channel (see [`channel_tag`]); 0 for frames outside any channel order.
    channel: u64,
    /// The frame.
    frame: WireFrame,
}

/// A channel's tag in outbound queues: a hash of its key. A collision only promotes more than
/// needed; it never reorders.
pub fn channel_tag<K: std::hash::Hash>(key: &K) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default()
        .hash_one(key)
        .max(1)
}

/// One FIFO per class, allocated only while frames wait: an idle connection's queue holds a
/// pointer, not six empty queues.
#[derive(Debug, Default)]
struct Queues(Option<Box<[VecDeque<Entry>; 6]>>);

/// What an unallocated class queue reads as.
static NO_FRAMES: VecDeque<Entry> = VecDeque::new();

impl std::ops::Index<usize> for Queues {
    type Output = VecDeque<Entry>;

    fn index(&self, class: usize) -> &VecDeque<Entry> {
        self.0.as_ref().map_or(&NO_FRAMES, |queues| &queues[class])
    }
}

impl std::ops::IndexMut<usize> for Queues {
    fn index_mut(&mut self, class: usize) -> &mut VecDeque<Entry> {
        &mut self.0.get_or_insert_with(Default::default)[class]
    }
}

/// The queue state behind the lock.
#[derive(Debug, Default)]
struct Inner {
    /// One FIFO per class.
    queues: Queues,
    /// Frames queued.
    frames: usize,
    /// Bytes queued.
    bytes: usize,
    /// Set once the connection is closing; control frames queued before it are still sent.
    /// Boxed: only a closing connection has one, and every open one's queue would otherwise
    /// hold its room (40 B).
    closing: Option<Box<CloseFrame>>,
    /// The close frame has been handed to the writer.
    close_taken: bool,
}

impl Inner {
    fn take(&mut self, class: usize) -> Option<WireFrame> {
        let entry = self.queues.0.as_mut()?[class].pop_front()?;
        self.frames -= 1;
        self.bytes -= entry.frame.len();
        Some(entry.frame)
    }

    /// Moves every queued frame of `channel` from the classes below `class` to the back of
    /// `class`, oldest first. Frames of one channel sit in classes of non-increasing priority in
    /// arrival order (this function keeps it so), so scanning the lower classes from the highest
    /// down yields them in arrival order.
    fn promote(&mut self, class: usize, channel: u64) {
        for lower in class + 1..Class::Ephemeral as usize {
            if self.queues[lower].iter().all(|e| e.channel != channel) {
                continue;
            }
            let (moved, kept): (VecDeque<Entry>, VecDeque<Entry>) =
                std::mem::take(&mut self.queues[lower])
                    .into_iter()
                    .partition(|e| e.channel == channel);
            self.queues[lower] = kept;
            self.queues[class].extend(moved);
        }
    }
}

/// One connection's outbound queue.
#[derive(Debug)]
pub struct Outbound {
    /// Frames and close state.
    inner: Mutex<Inner>,
    /// Bounds.
    config: OutboundConfig,
    /// Wakes the writer when a frame is queued or the connection starts closing.
    writer: Notify,
    /// Wakes the session when the writer made room.
    space: Notify,
    /// Wakes whoever waits for the connection to start closing.
    closing: Notify,
    /// Fast check for [`Outbound::is_closing`].
    closing_flag: AtomicBool,
    /// tungstenite wrote a reply of its own, for the writer to send (see `wire::Capture`).
    captured: AtomicBool,
}

fn close_frame(code: u16, reason: &str) -> Box<CloseFrame> {
    Box::new(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    })
}

impl Outbound {
    /// An empty queue with the given bounds.
    pub fn new(config: OutboundConfig) -> Self {
        Outbound {
            inner: Mutex::new(Inner::default()),
            config,
            writer: Notify::new(),
            space: Notify::new(),
            closing: Notify::new(),
            closing_flag: AtomicBool::new(false),
            captured: AtomicBool::new(false),
        }
    }

    /// Queues a frame outside any channel order (replies, errors, notices) without waiting.
    pub fn push(&self, class: Class, message: impl Into<WireFrame>) -> Pushed {
        self.push_in(class, 0, message.into())
    }

    /// Queues a message of the channel tagged `channel` without waiting, behind every queued
    /// message of the same channel. A full queue drops an ephemeral frame (the new one, or a
    /// queued one to make room for something more important); when nothing can be dropped the
    /// connection is closed with 4008.
    pub fn push_in(&self, class: Class, channel: u64, message: impl Into<WireFrame>) -> Pushed {
        self.push_within(class, channel, message.into(), 0, 0)
    }

    /// Queues a small control frame (a pong, an error, a heartbeat ping) from the connection's
    /// reader, which never waits. It may use a reserve above the queue's budget (64 frames,
    /// 64 KiB), so that a queue kept full by the connection's own replay (which waits for room
    /// inside the budget) still takes the replies the reader must send at once. A peer that
    /// reads nothing while it fills the reserve too is closed with 4008 like any slow consumer.
    pub fn push_control(&self, message: impl Into<WireFrame>) -> Pushed {
        self.push_within(
            Class::Control,
            0,
            message.into(),
            CONTROL_RESERVE_FRAMES,
            CONTROL_RESERVE_BYTES,
        )
    }

    fn push_within(
        &self,
        class: Class,
        channel: u64,
        message: WireFrame,
        extra_frames: usize,
        extra_bytes: usize,
    ) -> Pushed {
        let mut inner = self.inner.lock();
        if inner.closing.is_some() {
            return Pushed::Closed;
        }
        let max_frames = self.config.max_frames + extra_frames;
        let max_bytes = self.config.max_bytes + extra_bytes;
        let full = |i: &Inner| i.frames >= max_frames || i.bytes + message.len() > max_bytes;
        if full(&inner) {
            if class == Class::Ephemeral {
                return Pushed::Dropped;
            }
            while full(&inner) && inner.take(Class::Ephemeral as usize).is_some() {}
            if full(&inner) {
                inner.queues = Default::default();
                inner.frames = 0;
                inner.bytes = 0;
                inner.closing = Some(close_frame(
                    close::SLOW_CONSUMER,
                    "slow consumer: reconnect and resume from your offsets",
                ));
                drop(inner);
                self.start_closing();
                return Pushed::Overflow;
            }
        }
        let was_empty = inner.frames == 0;
        inner.frames += 1;
        inner.bytes += message.len();
        if channel != 0 {
            inner.promote(class as usize, channel);
        }
        inner.queues[class as usize].push_back(Entry {
            channel,
            frame: message,
        });
        drop(inner);
        // The writer takes the whole queue whenever it runs, and waits only once it found the
        // queue empty: a push onto a non-empty queue needs no wake-up.
        if was_empty {
            self.writer.notify_one();
        }
        Pushed::Queued
    }

    /// Queues a frame outside any channel order, waiting for room first. Returns false when the
    /// connection is closing.
    pub async fn send(&self, class: Class, message: impl Into<WireFrame>) -> Sent {
        self.send_in(class, 0, message).await
    }

    /// Queues a message of a channel (see [`Outbound::push_in`]), waiting for room first.
    pub async fn send_in(&self, class: Class, channel: u64, message: impl Into<WireFrame>) -> Sent {
        let message = message.into();
        // A frame over the whole budget would wait for room forever: refuse it at once, so the
        // caller can tell the client instead of wedging the connection.
        if message.len() > self.config.max_bytes {
            return Sent::TooLarge {
                bytes: message.len(),
                limit: self.config.max_bytes,
            };
        }
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let inner = self.inner.lock();
                if inner.closing.is_some() {
                    return Sent::Closed;
                }
                let room = inner.frames < self.config.max_frames
                    && inner.bytes + message.len() <= self.config.max_bytes;
                if room {
                    drop(inner);
                    return match self.push_in(class, channel, message) {
                        Pushed::Queued => Sent::Queued,
                        _ => Sent::Closed,
                    };
                }
            }
            tokio::select! {
                _ = &mut space => {}
                _ = self.closed() => return Sent::Closed,
            }
        }
    }

    /// Starts closing: control frames already queued are still sent, then the close frame.
    /// Later calls keep the first close code.
    pub fn close(&self, code: u16, reason: &str) {
        {
            let mut inner = self.inner.lock();
            if inner.closing.is_some() {
                return;
            }
            inner.closing = Some(close_frame(code, reason));
        }
        self.start_closing();
    }

    fn start_closing(&self) {
        self.closing_flag.store(true, Ordering::Release);
        self.closing.notify_waiters();
        self.writer.notify_one();
        self.space.notify_waiters();
    }

    /// True once the connection started closing.
    pub fn is_closing(&self) -> bool {
        self.closing_flag.load(Ordering::Acquire)
    }

    /// The close code, once closing.
    pub fn close_code(&self) -> Option<u16> {
        self.inner.lock().closing.as_ref().map(|c| c.code.into())
    }

    /// Resolves when the connection starts closing.
    pub async fn closed(&self) {
        loop {
            let notified = self.closing.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closing() {
                return;
            }
            notified.await;
        }
    }

    /// Wakes the writer for something tungstenite wrote (see `wire::Capture`).
    pub fn wake_writer(&self) {
        self.captured.store(true, Ordering::Release);
        self.writer.notify_one();
    }

    /// Waits for work and moves everything queued (up to `max` frames, in class order) into
    /// `out`; once closing only control frames, then the close frame. `None` after the close
    /// frame was taken.
    pub async fn next_batch(&self, out: &mut Vec<WireFrame>, max: usize) -> Option<Batch> {
        loop {
            let notified = self.writer.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inner = self.inner.lock();
                if inner.close_taken {
                    return None;
                }
                let classes = if inner.closing.is_some() { 1 } else { 6 };
                for class in 0..classes {
                    while out.len() < max {
                        match inner.take(class) {
                            Some(frame) => out.push(frame),
                            None => break,
                        }
                    }
                }
                if inner.frames == 0 && inner.queues.0.is_some() {
                    // Buffers are held only while frames wait: an idle connection keeps none.
                    inner.queues = Queues::default();
                }
                let captured = self.captured.swap(false, Ordering::AcqRel);
                if !out.is_empty() {
                    drop(inner);
                    self.space.notify_waiters();
                    return Some(Batch::Frames);
                }
                if let Some(frame) = inner.closing.as_deref().cloned() {
                    inner.close_taken = true;
                    return Some(Batch::Close(frame));
                }
                if captured {
                    return Some(Batch::Frames);
                }
            }
            notified.await;
        }
    }

    /// The next frame, decoded (the tests' view of what the writer would send).
    #[cfg(test)]
    pub async fn next(&self) -> Option<Next> {
        let mut out = Vec::new();
        match self.next_batch(&mut out, 1).await? {
            Batch::Frames => Some(Next::Frame(crate::frame::decode(out[0].bytes()).remove(0))),
            Batch::Close(frame) => Some(Next::Close(frame)),
        }
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.inner.lock().frames
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(max_frames: usize) -> Outbound {
        Outbound::new(OutboundConfig {
            max_frames,
            max_bytes: 1 << 20,
        })
    }

    use tokio_tungstenite::tungstenite::Message;

    fn text(s: &str) -> Message {
        Message::text(s)
    }

    async fn drain(o: &Outbound) -> Vec<String> {
        let mut out = Vec::new();
        while !o.is_empty() {
            match o.next().await {
                Some(Next::Frame(m)) => out.push(m.into_text().unwrap().to_string()),
                other => panic!("unexpected {other:?}"),
            }
        }
        out
    }

    #[tokio::test]
    async fn frames_leave_in_class_order_and_fifo_within_a_class() {
        let o = q(16);
        o.push(Class::Ephemeral, text("typing"));
        o.push(Class::Low, text("low"));
        o.push(Class::Normal, text("n1"));
        o.push(Class::Urgent, text("urgent"));
        o.push(Class::Normal, text("n2"));
        o.push(Class::Control, text("ack"));
        assert_eq!(
            drain(&o).await,
            ["ack", "urgent", "n1", "n2", "low", "typing"]
        );
    }

    #[tokio::test]
    async fn a_higher_priority_message_takes_its_channels_backlog_along_but_overtakes_others() {
        let o = q(16);
        o.push_in(Class::Normal, 1, text("a1"));
        o.push_in(Class::Normal, 2, text("b1"));
        o.push_in(Class::Low, 1, text("a2"));
        o.push_in(Class::Low, 2, text("b2"));
        o.push_in(Class::Urgent, 1, text("a3-urgent"));
        o.push_in(Class::Normal, 1, text("a4"));
        o.push(Class::Control, text("reply"));
        // Channel 1 keeps its order (a1 a2 a3 a4) while its urgent message jumps channel 2.
        assert_eq!(
            drain(&o).await,
            ["reply", "a1", "a2", "a3-urgent", "b1", "a4", "b2"]
        );
    }

    #[tokio::test]
    async fn ephemeral_frames_are_dropped_first_when_full() {
        let o = q(2);
        assert_eq!(o.push(Class::Ephemeral, text("t1")), Pushed::Queued);
        assert_eq!(o.push(Class::Normal, text("m1")), Pushed::Queued);
        // Full: a new ephemeral frame is dropped, a message evicts the queued ephemeral one.
        assert_eq!(o.push(Class::Ephemeral, text("t2")), Pushed::Dropped);
        assert_eq!(o.push(Class::Normal, text("m2")), Pushed::Queued);
        assert!(!o.is_closing());
        assert_eq!(drain(&o).await, ["m1", "m2"]);
    }

    #[tokio::test]
    async fn a_message_that_finds_the_queue_full_closes_with_4008() {
        let o = q(2);
        o.push(Class::Normal, text("m1"));
        o.push(Class::Normal, text("m2"));
        assert_eq!(o.push(Class::Normal, text("m3")), Pushed::Overflow);
        assert_eq!(o.push(Class::Urgent, text("m4")), Pushed::Closed);
        assert!(
            o.is_empty(),
            "the backlog is discarded: the client resumes from its offsets"
        );
        match o.next().await {
            Some(Next::Close(f)) => assert_eq!(u16::from(f.code), close::SLOW_CONSUMER),
            other => panic!("expected close, got {other:?}"),
        }
        assert!(o.next().await.is_none());
    }

    #[tokio::test]
    async fn close_sends_queued_control_frames_then_the_close_frame() {
        let o = q(8);
        o.push(Class::Normal, text("message"));
        o.push(Class::Control, text("error"));
        o.close(close::UNAUTHORIZED, "bad token");
        assert!(matches!(o.next().await, Some(Next::Frame(m)) if m.to_text().unwrap() == "error"));
        assert!(
            matches!(o.next().await, Some(Next::Close(f)) if u16::from(f.code) == close::UNAUTHORIZED)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn send_waits_for_room_instead_of_overflowing() {
        let o = std::sync::Arc::new(q(1));
        assert_eq!(o.send(Class::Control, text("a")).await, Sent::Queued);
        let o2 = o.clone();
        let waiting = tokio::spawn(async move { o2.send(Class::Control, text("b")).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert!(matches!(o.next().await, Some(Next::Frame(_))));
        assert_eq!(waiting.await.unwrap(), Sent::Queued);
        assert!(!o.is_closing());
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_over_the_whole_budget_is_refused_at_once_not_waited_for() {
        let o = Outbound::new(OutboundConfig {
            max_frames: 16,
            max_bytes: 1000,
        });
        let big = Message::text("x".repeat(1001));
        assert_eq!(
            o.send(Class::Control, big).await,
            Sent::TooLarge {
                bytes: 1005, // with its 4-byte header
                limit: 1000
            }
        );
        // The connection is untouched and still takes what fits.
        assert!(!o.is_closing());
        assert_eq!(o.send(Class::Control, text("fits")).await, Sent::Queued);
    }

    #[tokio::test]
    async fn control_replies_use_a_reserve_above_a_queue_kept_full_by_a_replay() {
        let o = q(4);
        for i in 0..4 {
            assert_eq!(
                o.push(Class::Normal, text(&format!("m{i}"))),
                Pushed::Queued
            );
        }
        // Full for messages...
        assert_eq!(o.push(Class::Normal, text("m4")), Pushed::Overflow);
        let o = q(4);
        for i in 0..4 {
            o.push(Class::Normal, text(&format!("m{i}")));
        }
        // ...but a pong still goes in, ahead of them.
        assert_eq!(o.push_control(text("pong")), Pushed::Queued);
        assert!(matches!(o.next().await, Some(Next::Frame(m)) if m.to_text().unwrap() == "pong"));
        // The reserve is bounded: a peer that reads nothing is closed like any slow consumer.
        let o = q(4);
        let mut last = Pushed::Queued;
        for _ in 0..200 {
            last = o.push_control(text("pong"));
            if last != Pushed::Queued {
                break;
            }
        }
        assert_eq!(last, Pushed::Overflow);
        assert_eq!(o.close_code(), Some(close::SLOW_CONSUMER));
    }
}
