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

/// Appends the NATS subject of Bellhop channel `channel`: `room:12` → `room.12`,
/// `user:a.b` → `user.a~b`, `broadcast` → `broadcast`.
pub fn push_subject(channel: &str, out: &mut Vec<u8>) {
    match channel.split_once(':') {
        Some((kind, id)) => {
            out.extend_from_slice(kind.as_bytes());
            out.push(b'.');
            out.extend(id.bytes().map(|b| if b == b'.' { b'~' } else { b }));
        }
        None => out.extend_from_slice(channel.as_bytes()),
    }
}

/// The NATS subject of Bellhop channel `channel` (see [`push_subject`]).
pub fn subject_of(channel: &str) -> String {
    let mut out = Vec::with_capacity(channel.len());
    push_subject(channel, &mut out);
    // Only ASCII bytes were swapped for ASCII bytes, so this is still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The Bellhop channel of a subject made by [`subject_of`]: `room.12` → `room:12`.
pub fn channel_of(subject: &str) -> String {
    match subject.split_once('.') {
        Some((kind, id)) => format!("{kind}:{}", id.replace('~', ".")),
        None => subject.to_owned(),
    }
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

/// A nats-server configuration for the benchmark: a client listener on `client_port` (used by
/// nothing but health checks), the WebSocket listener on `ws_port`, everything on loopback; with
/// `cluster`, this server's route port and the route ports of the other servers.
pub fn server_config(client_port: u16, ws_port: u16, cluster: Option<(u16, Vec<u16>)>) -> String {
    let mut c = String::with_capacity(2048);
    c.push_str(
        "# nats-server configuration written by bellhop-loadgen (systems::nats::server_config):\n\
         # the server set up at its best for the benchmark's workload (many WebSocket clients,\n\
         # small JSON messages, fast fan-out), on loopback only.\n\n",
    );
    let _ = writeln!(
        c,
        "# The plain TCP listener: the load generator does not use it, it is there because the\n\
         # server always has one; loopback only, like everything in the benchmark.\n\
         listen: \"127.0.0.1:{client_port}\"\n"
    );
    c.push_str(
        "# The largest payload a scenario sends is ~10 kB (Bellhop caps payload text at 10,000\n\
         # characters); 1 MB (the default) leaves room without letting one message hog a buffer.\n\
         max_payload: 1MB\n\n\
         # Outbound bytes buffered per connection before the server calls it a slow consumer and\n\
         # closes it. A broadcast to thousands of sockets queues bursts faster than a loaded 2-core\n\
         # machine drains them; 256 MB (default 64 MB) lets the burst drain instead of cutting\n\
         # clients, which is what Bellhop's bounded queues are measured against.\n\
         max_pending: 256MB\n\n\
         # How long a flush to one socket may block before that client is a slow consumer:\n\
         # 30 s (default 10 s), so a CPU-starved moment is not counted as a slow client.\n\
         write_deadline: \"30s\"\n\n\
         # Connections accepted (default 64K): never the limit of a run.\n\
         max_connections: 1000000\n\n\
         # Heartbeats at the defaults (ping_interval 2m, ping_max 2): the load generator answers\n\
         # every PING, and a shorter interval would only add traffic.\n\n\
         # Logging at the default level (no debug, no trace): tracing every message would measure\n\
         # the logger.\n\n",
    );
    let _ = writeln!(
        c,
        "websocket {{\n  \
         # The WebSocket listener the load generator connects to, loopback only.\n  \
         host: \"127.0.0.1\"\n  \
         port: {ws_port}\n  \
         # Plain ws://, like the Bellhop and Socket.IO runs (TLS would measure the cipher).\n  \
         no_tls: true\n  \
         # No permessage-deflate: small payloads, and deflate costs CPU per frame per client.\n  \
         compression: false\n  \
         # A connection storm on 2 cores can take longer than the 2 s default to upgrade.\n  \
         handshake_timeout: \"10s\"\n\
         }}"
    );
    if let Some((port, routes)) = cluster {
        c.push_str(
            "\n# Full mesh of routes between the benchmark's servers: a message published on one\n\
             # server reaches subscribers on the others (as Bellhop nodes share Redis).\n",
        );
        let _ = writeln!(
            c,
            "cluster {{\n  \
             name: \"bellhop-bench\"\n  \
             host: \"127.0.0.1\"\n  \
             port: {port}\n  \
             # Only the routes below: no gossiped URLs, the mesh is fixed and loopback only.\n  \
             no_advertise: true"
        );
        c.push_str("  routes: [\n");
        for route in routes {
            let _ = writeln!(c, "    \"nats-route://127.0.0.1:{route}\"");
        }
        c.push_str("  ]\n}\n");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chans() -> Vec<String> {
        vec!["room:12".to_owned(), "user:lg-3".to_owned()]
    }

    fn payload(s: u64) -> String {
        Payload {
            t: 100 + s,
            s,
            p: 4,
        }
        .encode(5)
    }

    fn msg(subject: &str, sid: usize, body: &str) -> String {
        format!("MSG {subject} {sid} {}\r\n{body}\r\n", body.len())
    }

    fn bytes_of(m: &Message) -> Vec<u8> {
        match m {
            Message::Binary(b) => b.to_vec(),
            Message::Text(t) => t.as_bytes().to_vec(),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn decode_all(wire: &mut NatsWire, parts: &[&[u8]]) -> Vec<Event> {
        let mut out = Vec::new();
        for part in parts {
            wire.decode(&Message::binary(part.to_vec()), &chans(), &mut out);
        }
        out
    }

    fn deliveries(events: &[Event]) -> Vec<(usize, u64)> {
        events
            .iter()
            .map(|e| match e {
                Event::Delivery(d) => (d.index, d.payload.s),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    fn user() -> User {
        User {
            id: "lg-\"7".to_owned(),
            token: String::new(),
        }
    }

    #[test]
    fn subjects_round_trip() {
        for ch in [
            "room:12",
            "user:lg-3",
            "dept:house.keeping",
            "broadcast",
            "user:a..b",
        ] {
            let s = subject_of(ch);
            assert!(!s.contains(':') && !s.contains(' '), "{s}");
            assert_eq!(channel_of(&s), ch);
        }
        assert_eq!(subject_of("room:12"), "room.12");
        assert_eq!(subject_of("user:a.b"), "user.a~b");
    }

    #[test]
    fn hello_subscribe_and_publish_encode_the_protocol() {
        let mut wire = NatsWire::new(&WireOptions::default());
        let hello = wire.hello(&user());
        assert_eq!(hello.len(), 1);
        let text = String::from_utf8(bytes_of(&hello[0])).expect("utf-8");
        assert!(text.starts_with("CONNECT {"), "{text}");
        assert!(text.ends_with("}\r\nPING\r\n"), "{text}");
        let json = &text["CONNECT ".len()..text.len() - "\r\nPING\r\n".len()];
        let v: serde_json::Value = serde_json::from_str(json).expect("CONNECT is JSON");
        assert_eq!(v["name"], "lg-\"7");
        assert_eq!(v["verbose"], false);
        assert_eq!(v["protocol"], 1);

        let subs = [
            Sub {
                channel: "room:12".into(),
                since: None,
            },
            Sub {
                channel: "user:lg-3".into(),
                since: Some("1-0".into()),
            },
        ];
        let sub = wire.subscribe(&subs);
        assert_eq!(sub.len(), 1);
        assert_eq!(
            bytes_of(&sub[0]),
            b"SUB room.12 1\r\nSUB user.lg-3 2\r\nPING\r\n"
        );
        assert!(wire.subscribe(&[]).is_empty());

        let body = payload(1);
        let publ = wire.publish("room:12", &body, 0);
        assert_eq!(
            bytes_of(&publ),
            format!("PUB room.12 {}\r\n{body}\r\n", body.len()).into_bytes()
        );
    }

    #[test]
    fn pongs_confirm_the_handshake_then_each_batch_of_subs() {
        let mut wire = NatsWire::new(&WireOptions::default());
        let _ = wire.hello(&user());
        let subs: Vec<Sub> = chans()
            .into_iter()
            .map(|channel| Sub {
                channel,
                since: None,
            })
            .collect();
        let _ = wire.subscribe(&subs);
        let events = decode_all(
            &mut wire,
            &[
                b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n",
                b"PONG\r\n+OK\r\nPONG\r\nPONG\r\n",
            ],
        );
        match events.as_slice() {
            [Event::Ready, Event::Subscribed {
                index: 0,
                recovered: None,
                ..
            }, Event::Subscribed {
                index: 1,
                recovered: None,
                ..
            }] => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn pings_are_answered_and_errors_reported() {
        let mut wire = NatsWire::new(&WireOptions::default());
        let events = decode_all(
            &mut wire,
            &[
                b"PING\r\n-ERR 'Permissions Violation for Publish to \"x\"'\r\nPI",
                b"NG\r\n",
            ],
        );
        match events.as_slice() {
            [Event::Reply(a), Event::Error(e), Event::Reply(b)] => {
                assert_eq!(bytes_of(a), b"PONG\r\n");
                assert_eq!(bytes_of(b), b"PONG\r\n");
                assert_eq!(e, "nats: Permissions Violation for Publish to \"x\"");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(wire.buf.is_empty());
    }

    #[test]
    fn messages_coalesced_in_one_websocket_message_are_all_delivered() {
        let mut wire = NatsWire::new(&WireOptions::default());
        // The last one with a reply subject.
        let all = format!(
            "{}{}PING\r\nMSG room.12 1 _INBOX.x {}\r\n{}\r\n",
            msg("room.12", 1, &payload(1)),
            msg("user.lg-3", 2, &payload(2)),
            payload(3).len(),
            payload(3)
        );
        let events = decode_all(&mut wire, &[all.as_bytes()]);
        assert_eq!(events.len(), 4);
        assert!(matches!(events[2], Event::Reply(_)));
        let mut rest: Vec<Event> = events;
        rest.remove(2);
        assert_eq!(deliveries(&rest), vec![(0, 1), (1, 2), (0, 3)]);
        assert!(wire.buf.is_empty());
    }

    #[test]
    fn messages_split_anywhere_across_websocket_messages_are_reassembled() {
        let all = format!(
            "{}{}{}",
            msg("room.12", 1, &payload(1)),
            msg("user.lg-3", 2, &payload(2)),
            msg("room.12", 1, &payload(3)),
        );
        let all = all.as_bytes();
        // Every split into two parts, and byte by byte.
        for cut in 0..=all.len() {
            let mut wire = NatsWire::new(&WireOptions::default());
            let events = decode_all(&mut wire, &[&all[..cut], &all[cut..]]);
            assert_eq!(
                deliveries(&events),
                vec![(0, 1), (1, 2), (0, 3)],
                "cut at {cut}"
            );
            assert!(wire.buf.is_empty());
        }
        let mut wire = NatsWire::new(&WireOptions::default());
        let parts: Vec<&[u8]> = all.chunks(1).collect();
        let events = decode_all(&mut wire, &parts);
        assert_eq!(deliveries(&events), vec![(0, 1), (1, 2), (0, 3)]);
    }

    #[test]
    fn hmsg_bodies_skip_their_headers() {
        let mut wire = NatsWire::new(&WireOptions::default());
        let headers = "NATS/1.0\r\nX: y\r\n\r\n";
        let body = payload(9);
        let line = format!(
            "HMSG user.lg-3 2 {} {}\r\n{headers}{body}\r\n",
            headers.len(),
            headers.len() + body.len()
        );
        let events = decode_all(&mut wire, &[line.as_bytes()]);
        assert_eq!(deliveries(&events), vec![(1, 9)]);
    }

    #[test]
    fn foreign_messages_and_unknown_sids_are_not_counted() {
        let mut wire = NatsWire::new(&WireOptions::default());
        let all = format!(
            "{}{}{}{}",
            msg("room.12", 1, "not json"),
            msg("room.12", 9, &payload(1)),
            msg("room.12", 0, &payload(1)),
            msg("room.12", 1, &payload(2)),
        );
        let events = decode_all(&mut wire, &[all.as_bytes()]);
        assert_eq!(deliveries(&events), vec![(0, 2)]);
    }

    #[test]
    fn garbage_is_reported_without_panicking() {
        for junk in [
            &b"MSG room.12 x 5\r\nhello\r\n"[..],
            b"MSG room.12 1 99999999999999999999999\r\n",
            b"MSG room.12 1 999999999\r\n",
            b"MSG\r\n",
            b"HMSG a 1 9 3\r\nabc\r\n",
            b"MSG a 1 3\r\nabcXY",
            b"WHAT\r\n",
            b"\xff\xfe\r\n",
        ] {
            let mut wire = NatsWire::new(&WireOptions::default());
            let events = decode_all(&mut wire, &[junk]);
            assert!(
                matches!(events.as_slice(), [Event::Error(_)]),
                "{junk:?}: {events:?}"
            );
        }
        // An endless control line is cut, not buffered forever.
        let mut wire = NatsWire::new(&WireOptions::default());
        let long = vec![b'A'; MAX_CONTROL_LINE + 1];
        let events = decode_all(&mut wire, &[&long]);
        assert!(matches!(events.as_slice(), [Event::Error(_)]));
        assert!(wire.buf.is_empty());
    }

    #[test]
    fn server_config_has_the_listeners_and_the_routes() {
        let single = server_config(14222, 18080, None);
        assert!(single.contains("listen: \"127.0.0.1:14222\""));
        assert!(single.contains("port: 18080"));
        assert!(single.contains("no_tls: true"));
        assert!(single.contains("compression: false"));
        assert!(!single.contains("cluster {"));
        let clustered = server_config(14222, 18080, Some((16222, vec![16223, 16224])));
        assert!(clustered.contains("port: 16222"));
        assert!(clustered.contains("\"nats-route://127.0.0.1:16223\""));
        assert!(clustered.contains("\"nats-route://127.0.0.1:16224\""));
    }
}
