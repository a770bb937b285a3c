//! Bellhop channels as NATS subjects and back: `kind:id` becomes `kind.id`, a `.` inside the id
//! becomes `~`, so every channel is exactly two tokens; `broadcast` stays `broadcast`.

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
