//! Messages for tests: one well-formed chat envelope, which a test adjusts with struct update
//! syntax (`Envelope { payload, ..chat(...) }`) instead of writing every field again.

use bellhop_protocol::{Channel, Envelope, Priority, Role, Sender};

/// A normal-priority `CHAT_MESSAGE` with id `id` from staff user `u1` to `channel` of
/// `property`, with payload `{"text": id}` and a fixed timestamp.
pub fn chat(property: &str, channel: Channel, id: &str) -> Envelope {
    Envelope {
        message_id: id.into(),
        event: "CHAT_MESSAGE".into(),
        namespace: property.into(),
        channel,
        payload: serde_json::json!({ "text": id }),
        timestamp: "2026-01-01T00:00:00.000Z".into(),
        sender: sender("u1", Role::Staff),
        priority: Priority::Normal,
        correlation_id: None,
    }
}

/// The sender `id` with `role`.
pub fn sender(id: &str, role: Role) -> Sender {
    Sender {
        id: id.into(),
        role,
    }
}
