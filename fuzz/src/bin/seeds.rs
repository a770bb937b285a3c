//! Writes the fuzzers' seed corpus: one valid frame of every client and server type, in JSON
//! for `decode_json` and MessagePack for `decode_msgpack`, and names and offsets for
//! `parse_names`. The output is committed under `fuzz/seeds/`; run this again after changing the
//! protocol: `make fuzz-seeds`.
//!
//! Usage: `seeds <dir>` (writes `<dir>/<target>/<name>`; existing files are replaced).

use std::path::Path;
use std::sync::Arc;

use bellhop_protocol::{
    Channel, ClientFrame, Codec, Envelope, ErrorCode, HistoryEntry, Offset, Priority, PublishFrame,
    Request, Role, Sender, ServerFrame, Welcome,
};
use serde_json::json;

fn envelope(payload: serde_json::Value) -> Arc<Envelope> {
    Arc::new(Envelope {
        message_id: "5f0c6c1e-8d1a-4e59-9a43-0b7f6c1d2e3f".into(),
        event: "SERVICE_REQUEST".into(),
        namespace: "h1".into(),
        channel: Channel::Dept("housekeeping".into()),
        payload,
        timestamp: "2026-11-23T09:30:00.000Z".into(),
        sender: Sender {
            id: "guest-101".into(),
            role: Role::Guest,
        },
        priority: Priority::Normal,
        correlation_id: Some("req-1".into()),
    })
}

/// Every client frame type, some twice with their optional fields.
fn client_frames() -> Vec<(&'static str, Request)> {
    let room = Channel::Room("101".into());
    let dept = Channel::Dept("housekeeping".into());
    let frames = vec![
        (
            "auth",
            Some(1),
            ClientFrame::Auth {
                token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2ln".into(),
            },
        ),
        (
            "subscribe",
            Some(2),
            ClientFrame::Subscribe {
                channel: dept.clone(),
                since: None,
            },
        ),
        (
            "subscribe-since",
            Some(3),
            ClientFrame::Subscribe {
                channel: room.clone(),
                since: Some(Offset::new(1_795_427_394_806, 0)),
            },
        ),
        (
            "subscribe-broadcast",
            None,
            ClientFrame::Subscribe {
                channel: Channel::Broadcast,
                since: None,
            },
        ),
        (
            "unsubscribe",
            Some(4),
            ClientFrame::Unsubscribe {
                channel: Channel::User("maria".into()),
            },
        ),
        (
            "publish",
            Some(5),
            ClientFrame::Publish(PublishFrame {
                channel: dept.clone(),
                event: "SERVICE_REQUEST".into(),
                payload: json!({"room": "101", "item": "towels", "count": 2}),
                priority: None,
                correlation_id: None,
            }),
        ),
        (
            "publish-full",
            Some(u64::MAX),
            ClientFrame::Publish(PublishFrame {
                channel: room.clone(),
                event: "EMERGENCY_ALERT".into(),
                payload: json!({"text": "Fire drill at 10:00 — évacuez 🚒", "floors": [1, 2, -3],
                    "ratio": 0.25, "big": 18_446_744_073_709_551_615u64, "ok": true, "none": null}),
                priority: Some(Priority::Urgent),
                correlation_id: Some("drill-7".into()),
            }),
        ),
        (
            "history",
            Some(6),
            ClientFrame::History {
                channel: room.clone(),
                since: Some(Offset::new(5, 1)),
                limit: Some(100),
            },
        ),
        (
            "history-bare",
            None,
            ClientFrame::History {
                channel: dept.clone(),
                since: None,
                limit: None,
            },
        ),
        (
            "presence",
            Some(7),
            ClientFrame::Presence {
                channel: room.clone(),
            },
        ),
        (
            "typing",
            None,
            ClientFrame::Typing {
                channel: room.clone(),
            },
        ),
        (
            "read",
            Some(8),
            ClientFrame::Read {
                channel: dept,
                offset: Offset::new(1_795_427_394_806, 3),
            },
        ),
        ("ping", Some(9), ClientFrame::Ping),
        ("ping-bare", None, ClientFrame::Ping),
    ];
    frames
        .into_iter()
        .map(|(name, id, frame)| (name, Request { id, frame }))
        .collect()
}

/// Every server frame type.
fn server_frames() -> Vec<(&'static str, ServerFrame)> {
    let room = Channel::Room("101".into());
    vec![
        (
            "welcome",
            ServerFrame::Welcome(Welcome {
                id: Some(1),
                session_id: "0b7f6c1d".into(),
                node: "node-1".into(),
                user_id: "maria".into(),
                role: Role::Staff,
                property: "h1".into(),
                heartbeat_seconds: 30,
            }),
        ),
        (
            "subscribed",
            ServerFrame::Subscribed {
                id: Some(2),
                channel: room.clone(),
                offset: Offset::new(1_795_427_394_806, 0),
                recovered: false,
                unread: 3,
            },
        ),
        (
            "unsubscribed",
            ServerFrame::Unsubscribed {
                id: None,
                channel: room.clone(),
            },
        ),
        (
            "ack",
            ServerFrame::Ack {
                id: Some(5),
                message_id: Some("5f0c6c1e".into()),
                offset: Offset::new(1_795_427_394_806, 1),
                unread: None,
            },
        ),
        (
            "ack-read",
            ServerFrame::Ack {
                id: Some(8),
                message_id: None,
                offset: Offset::new(7, 0),
                unread: Some(0),
            },
        ),
        (
            "history",
            ServerFrame::History {
                id: Some(6),
                channel: room.clone(),
                messages: vec![HistoryEntry {
                    offset: Offset::new(1_795_427_394_806, 0),
                    message: envelope(json!({"room": "101"})),
                }],
            },
        ),
        (
            "presence",
            ServerFrame::Presence {
                id: Some(7),
                channel: room.clone(),
                users: vec!["a".into(), "b".into()],
            },
        ),
        (
            "message",
            ServerFrame::Message {
                channel: Channel::Dept("housekeeping".into()),
                offset: Offset::new(1_795_427_394_806, 0),
                message: envelope(json!({"room": "101", "item": "towels", "count": 2})),
            },
        ),
        (
            "join",
            ServerFrame::Join {
                channel: room.clone(),
                user_id: "a".into(),
            },
        ),
        (
            "leave",
            ServerFrame::Leave {
                channel: room.clone(),
                user_id: "a".into(),
            },
        ),
        (
            "typing",
            ServerFrame::Typing {
                channel: room,
                user_id: "a".into(),
            },
        ),
        (
            "error",
            ServerFrame::Error {
                id: Some(5),
                code: ErrorCode::RateLimited,
                message: "slow down".into(),
                retry_after_ms: Some(1000),
            },
        ),
        ("pong", ServerFrame::Pong { id: Some(9) }),
    ]
}

/// Seeds for `parse_names`: every channel kind, offsets, ids and events, near their limits.
fn names() -> Vec<(&'static str, String)> {
    vec![
        ("channel-room", "room:101".into()),
        ("channel-dept", "dept:front-desk".into()),
        ("channel-user", "user:u-1.a_b".into()),
        ("channel-broadcast", "broadcast".into()),
        ("channel-longest", format!("room:{}", "x".repeat(64))),
        ("offset", "1795427394806-0".into()),
        ("offset-max", format!("{}-{}", u64::MAX, u64::MAX)),
        ("event", "ROOM_STATUS_UPDATE".into()),
    ]
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .ok_or("usage: seeds <dir>  (e.g. fuzz/seeds)")?;
    let dir = Path::new(&dir);
    let mut count = 0;
    for (codec, target, ext) in [
        (Codec::Json, "decode_json", "json"),
        (Codec::MsgPack, "decode_msgpack", "msgpack"),
    ] {
        for (name, request) in client_frames() {
            let bytes = codec.encode_request(&request)?;
            assert_eq!(codec.decode_request(&bytes)?, request, "{name}");
            bellhop_fuzz::decode(codec, &bytes);
            write(dir, target, &format!("client-{name}.{ext}"), &bytes)?;
            count += 1;
        }
        for (name, frame) in server_frames() {
            let bytes = codec.encode(&frame)?;
            assert_eq!(codec.decode_server(&bytes)?, frame, "{name}");
            bellhop_fuzz::decode(codec, &bytes);
            write(dir, target, &format!("server-{name}.{ext}"), &bytes)?;
            count += 1;
        }
    }
    for (name, text) in names() {
        bellhop_fuzz::parse_names(text.as_bytes());
        write(dir, "parse_names", &format!("{name}.txt"), text.as_bytes())?;
        count += 1;
    }
    eprintln!("wrote {count} seeds under {}", dir.display());
    Ok(())
}
