//! NATS core protocol over nats-server's WebSocket listener.
//!
//! The server opens with `INFO {...}`; [`Wire::hello`] sends `CONNECT {...}` and `PING`, and the
//! `PONG` that answers it ends the handshake ([`Event::Ready`]). A subscribe call sends one
//! `SUB <subject> <sid>` per channel and a `PING`: the server handles a connection's protocol in
//! order, so the `PONG` confirms every `SUB` before it (NATS core has no acknowledgement of its
//! own, and no resume: `recovered` is `None`). Publishing is `PUB <subject> <len>` and the payload.
//!
//! Deliveries arrive as `MSG <subject> <sid> [reply-to] <len>\r\n<payload>\r\n`. One WebSocket
//! message may carry several protocol lines and an `MSG` may be split over several WebSocket
//! messages, so [`NatsWire::decode`] is a streaming parser that keeps what it could not use yet.
//! The sid says which channel a message is for: the `n`-th channel subscribed on a connection
//! (counting from 0 over all its subscribe calls) gets sid `n + 1`.
//!
//! Subjects: Bellhop's `kind:id` becomes `kind.id`, and a `.` inside the id becomes `~` (ids are
//! `[A-Za-z0-9_.-]`, so `~` never occurs in one), so every channel is exactly two tokens and
//! [`channel_of`] maps a subject back. `broadcast` stays `broadcast`.

//!
//! This file is the wire (encoding and the streaming decoder); `subjects.rs` maps channels to
//! subjects, `server_config.rs` writes nats-server's configuration, `tests.rs` holds the unit
//! tests.

mod server_config;
mod subjects;
#[cfg(test)]
mod tests;

pub use server_config::server_config;
pub use subjects::{channel_of, push_subject, subject_of};

use std::collections::VecDeque;
use std::fmt::Write as _;

use tokio_tungstenite::tungstenite::Message;

use super::{Delivery, Event, Payload, Sub, User, Wire, WireOptions};

/// The longest control line (`INFO`, `MSG ...`, `-ERR ...`) kept while waiting for its end; an
/// `INFO` listing a cluster's URLs can be long, but nothing legitimate comes near this.
const MAX_CONTROL_LINE: usize = 64 * 1024;

/// The largest message body accepted (nats-server refuses `max_payload` above 64 MB).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// What the answer to one of our `PING`s confirms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// The `PING` after `CONNECT`: the handshake.
    Ready,
    /// The `PING` after a batch of `SUB`s: `count` subscriptions at positions `0..count` of that
    /// subscribe call.
    Subs { count: usize },
}

/// Per-connection state of the NATS codec.
#[derive(Debug, Default)]
pub struct NatsWire {
    /// Received bytes not parsed yet: the start of a control line or of an `MSG` whose body has
    /// not all arrived. Empty most of the time, and then messages are parsed in place.
    buf: Vec<u8>,
    /// Our `PING`s not answered yet, oldest first.
    pending: VecDeque<Pending>,
    /// Channels subscribed so far on this connection (the next sid is this plus one).
    subscribed: usize,
}

impl NatsWire {
    /// A codec for one connection.
    pub fn new(_opts: &WireOptions) -> Self {
        Self::default()
    }

    /// Parses the protocol in `data` and returns how many bytes were used; the rest is an
    /// incomplete control line or message that needs more bytes.
    fn parse(&mut self, data: &[u8], chans: &[String], out: &mut Vec<Event>) -> usize {
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                if rest.len() > MAX_CONTROL_LINE {
                    out.push(Event::Error(format!(
                        "nats: control line longer than {MAX_CONTROL_LINE} bytes without an end"
                    )));
                    return data.len();
                }
                return pos;
            };
            let line = trim_cr(&rest[..nl]);
            let after = nl + 1;
            let (op, args) = split_op(line);
            if op.eq_ignore_ascii_case(b"MSG") || op.eq_ignore_ascii_case(b"HMSG") {
                let headers = op.len() == 4;
                let Some(head) = MsgHead::parse(args, headers) else {
                    out.push(Event::Error(format!(
                        "nats: bad {} line: {}",
                        String::from_utf8_lossy(op),
                        String::from_utf8_lossy(line)
                    )));
                    // The body's length is unknown: nothing after this can be trusted.
                    return data.len();
                };
                let end = after + head.total;
                // The body, then its CRLF.
                if rest.len() < end + 2 {
                    return pos;
                }
                if &rest[end..end + 2] != b"\r\n" {
                    out.push(Event::Error(
                        "nats: message body not followed by CRLF".into(),
                    ));
                    return data.len();
                }
                self.deliver(&head, &rest[after + head.headers..end], chans, out);
                pos += end + 2;
                continue;
            }
            pos += after;
            if op.eq_ignore_ascii_case(b"PING") {
                out.push(Event::Reply(pong()));
            } else if op.eq_ignore_ascii_case(b"PONG") {
                match self.pending.pop_front() {
                    Some(Pending::Ready) => out.push(Event::Ready),
                    Some(Pending::Subs { count }) => {
                        out.extend((0..count).map(|index| Event::Subscribed {
                            index,
                            recovered: None,
                            offset: None,
                        }))
                    }
                    // Not an answer to any PING of ours: nothing to confirm.
                    None => {}
                }
            } else if op.eq_ignore_ascii_case(b"-ERR") {
                let text = String::from_utf8_lossy(args);
                out.push(Event::Error(format!(
                    "nats: {}",
                    text.trim().trim_matches('\'').trim()
                )));
            } else if op.eq_ignore_ascii_case(b"+OK")
                || op.eq_ignore_ascii_case(b"INFO")
                || op.is_empty()
            {
                // +OK only comes in verbose mode; INFO (first and async updates) changes nothing
                // for a client that never reconnects by itself.
            } else {
                out.push(Event::Error(format!(
                    "nats: unknown protocol line: {}",
                    String::from_utf8_lossy(line)
                )));
            }
        }
        pos
    }

    fn deliver(&self, head: &MsgHead, body: &[u8], chans: &[String], out: &mut Vec<Event>) {
        // sid n + 1 is the n-th channel; anything else is not one of ours.
        let Some(index) = head.sid.checked_sub(1) else {
            return;
        };
        if index >= chans.len() {
            return;
        }
        // Someone else's message on the subject is not ours to count.
        if let Ok(payload) = serde_json::from_slice::<Payload>(body) {
            out.push(Event::Delivery(Delivery {
                index,
                payload,
                offset: None,
            }));
        }
    }
}

/// The parsed arguments of an `MSG` or `HMSG` line.
#[derive(Debug)]
struct MsgHead {
    sid: usize,
    /// Header bytes at the start of the body (`HMSG` only).
    headers: usize,
    /// Body bytes, headers included.
    total: usize,
}

impl MsgHead {
    /// `<subject> <sid> [reply-to] <#bytes>`, or for `HMSG`
    /// `<subject> <sid> [reply-to] <#header bytes> <#total bytes>`.
    fn parse(args: &[u8], headers: bool) -> Option<Self> {
        let mut fields: [&[u8]; 5] = [&[]; 5];
        let mut n = 0;
        for field in args
            .split(|&b| b == b' ' || b == b'\t')
            .filter(|f| !f.is_empty())
        {
            *fields.get_mut(n)? = field;
            n += 1;
        }
        let lengths = if headers { 2 } else { 1 };
        // subject, sid, an optional reply-to, then the lengths.
        if n != 2 + lengths && n != 3 + lengths {
            return None;
        }
        let sid = parse_usize(fields[1])?;
        let total = parse_usize(fields[n - 1])?;
        let header_len = if headers {
            parse_usize(fields[n - 2])?
        } else {
            0
        };
        if header_len > total || total > MAX_BODY {
            return None;
        }
        Some(Self {
            sid,
            headers: header_len,
            total,
        })
    }
}

/// A decimal number of ASCII digits.
fn parse_usize(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0usize, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
        } else {
            None
        }
    })
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The operation name and the rest of the line.
fn split_op(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[]),
    }
}

fn pong() -> Message {
    Message::Binary(bytes::Bytes::from_static(b"PONG\r\n"))
}

fn push_usize(n: usize, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        // n % 10 < 10, so the cast cannot truncate.
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

impl Wire for NatsWire {
    fn url(&self, base: &str, _user: &User) -> String {
        base.to_owned()
    }

    fn hello(&mut self, user: &User) -> Vec<Message> {
        // serde_json escapes the id into a JSON string; an id never fails to serialize.
        let name = serde_json::to_string(&user.id).unwrap_or_else(|_| "\"\"".to_owned());
        let mut text = String::with_capacity(160 + name.len());
        // `echo` (the default) is spelled out: a publisher subscribed to its own channel gets its
        // message back, as in Bellhop and Socket.IO.
        let _ = write!(
            text,
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":false,\
             \"no_responders\":false,\"echo\":true,\"name\":{name},\"protocol\":1}}\r\nPING\r\n"
        );
        self.pending.push_back(Pending::Ready);
        vec![Message::Binary(text.into_bytes().into())]
    }

    fn subscribe(&mut self, subs: &[Sub]) -> Vec<Message> {
        if subs.is_empty() {
            return Vec::new();
        }
        let mut out =
            Vec::with_capacity(subs.iter().map(|s| s.channel.len() + 16).sum::<usize>() + 6);
        for sub in subs {
            self.subscribed += 1;
            out.extend_from_slice(b"SUB ");
            push_subject(&sub.channel, &mut out);
            out.push(b' ');
            push_usize(self.subscribed, &mut out);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"PING\r\n");
        self.pending.push_back(Pending::Subs { count: subs.len() });
        vec![Message::Binary(out.into())]
    }

    fn publish(&mut self, channel: &str, payload: &str, _id: u64) -> Message {
        let mut out = Vec::with_capacity(channel.len() + payload.len() + 20);
        out.extend_from_slice(b"PUB ");
        push_subject(channel, &mut out);
        out.push(b' ');
        push_usize(payload.len(), &mut out);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(payload.as_bytes());
        out.extend_from_slice(b"\r\n");
        Message::Binary(out.into())
    }

    fn decode(&mut self, message: &Message, chans: &[String], out: &mut Vec<Event>) {
        let data: &[u8] = match message {
            Message::Binary(b) => b,
            Message::Text(t) => t.as_bytes(),
            _ => return,
        };
        if self.buf.is_empty() {
            // The common case: whole protocol lines, parsed where they lie.
            let used = self.parse(data, chans, out);
            self.buf.extend_from_slice(&data[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.buf);
            buf.extend_from_slice(data);
            let used = self.parse(&buf, chans, out);
            buf.drain(..used);
            self.buf = buf;
        }
    }
}
