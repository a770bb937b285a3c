//! The NATS wire's unit tests: subjects, the protocol it writes, handshakes and confirmations,
//! coalesced and split messages, headers, foreign and garbage input, the server configuration.

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
