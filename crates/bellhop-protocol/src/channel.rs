//! Channel names: `room:<id>`, `dept:<name>`, `user:<id>` and `broadcast`, always inside one
//! property (the property comes from the token, never from the channel name).

use std::fmt;
use std::str::FromStr;

/// Longest id allowed inside a channel name (and for property and user ids).
pub const MAX_ID_LEN: usize = 64;

/// A channel inside one property.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// One hotel room: its guests and any staff working it.
    Room(String),
    /// One department (`housekeeping`, `maintenance`, `front-desk`, ...).
    Dept(String),
    /// One person, on all of their devices.
    User(String),
    /// The whole property.
    Broadcast,
}

/// Why a channel name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The prefix is not one of `room:`, `dept:`, `user:` or the word `broadcast`.
    #[error(
        "unknown channel kind in {0:?}: expected room:<id>, dept:<name>, user:<id> or broadcast"
    )]
    UnknownKind(String),
    /// The id part is empty, too long or uses characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid id {0:?} in channel name: ids match [A-Za-z0-9_.-]{{1,64}}")]
    InvalidId(String),
}

/// True when `id` matches `[A-Za-z0-9_.-]{1,64}`, the rule for every id in the protocol.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl Channel {
    /// The id part (`101` for `room:101`); empty for `broadcast`.
    pub fn id(&self) -> &str {
        match self {
            Channel::Room(id) | Channel::Dept(id) | Channel::User(id) => id,
            Channel::Broadcast => "",
        }
    }
}

impl FromStr for Channel {
    type Err = ChannelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "broadcast" {
            return Ok(Channel::Broadcast);
        }
        let (kind, id) = s
            .split_once(':')
            .ok_or_else(|| ChannelError::UnknownKind(truncate(s)))?;
        let make: fn(String) -> Channel = match kind {
            "room" => Channel::Room,
            "dept" => Channel::Dept,
            "user" => Channel::User,
            _ => return Err(ChannelError::UnknownKind(truncate(s))),
        };
        if !is_valid_id(id) {
            return Err(ChannelError::InvalidId(truncate(id)));
        }
        Ok(make(id.to_owned()))
    }
}

/// Error messages echo client input; keep them short.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Channel::Room(id) => write!(f, "room:{id}"),
            Channel::Dept(id) => write!(f, "dept:{id}"),
            Channel::User(id) => write!(f, "user:{id}"),
            Channel::Broadcast => f.write_str("broadcast"),
        }
    }
}

serde_as_text!(Channel);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_prints_it_back() {
        for name in ["room:101", "dept:housekeeping", "user:u-1.a_b", "broadcast"] {
            let channel: Channel = name.parse().unwrap();
            assert_eq!(channel.to_string(), name);
        }
        assert_eq!("room:101".parse(), Ok(Channel::Room("101".into())));
    }

    #[test]
    fn rejects_unknown_kinds_and_bad_ids() {
        assert!(matches!(
            "lobby:1".parse::<Channel>(),
            Err(ChannelError::UnknownKind(_))
        ));
        assert!(matches!(
            "room".parse::<Channel>(),
            Err(ChannelError::UnknownKind(_))
        ));
        assert!(matches!(
            "broadcast:x".parse::<Channel>(),
            Err(ChannelError::UnknownKind(_))
        ));
        assert!(matches!(
            "room:".parse::<Channel>(),
            Err(ChannelError::InvalidId(_))
        ));
        assert!(matches!(
            "room:a b".parse::<Channel>(),
            Err(ChannelError::InvalidId(_))
        ));
        assert!(matches!(
            "room:a:b".parse::<Channel>(),
            Err(ChannelError::InvalidId(_))
        ));
        assert!(matches!(
            "room:é".parse::<Channel>(),
            Err(ChannelError::InvalidId(_))
        ));
        let long = format!("room:{}", "x".repeat(65));
        assert!(matches!(
            long.parse::<Channel>(),
            Err(ChannelError::InvalidId(_))
        ));
        let max = format!("room:{}", "x".repeat(64));
        assert!(max.parse::<Channel>().is_ok());
    }
}
