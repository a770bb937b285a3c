//! The channel policy of protocol v1: who may read and who may publish on which channel, and who
//! may change a message's priority. Pure functions over a [`Principal`].
//!
//! Reading covers `subscribe`, `history` and `read`; publishing covers `publish` and `typing`;
//! presence (the `presence` list and live `join`/`leave`/`typing` notices) is reading, except
//! that guests see it only on their rooms: on `broadcast` it would list every guest and staff
//! member of the property and let a guest watch them come and go. The table (see
//! `docs/PROTOCOL.md`):
//!
//! | role | reads | publishes | presence |
//! |---|---|---|---|
//! | guest | `user:<self>`, its `rooms`, `broadcast` | its `rooms`, any `dept:` | `user:<self>`, its `rooms` |
//! | staff | `user:<self>`, its `depts`, any `room:`, `broadcast` | any `room:`, its `depts`, any `user:` | as reads |
//! | manager, admin, service | everything in the property | everything in the property | everything |
//!
//! Whether a `dept:` exists at all (`DEPARTMENTS`) is the node's check, before this one.
//!
//! The property is never part of a channel name: it always comes from the token, so nobody can
//! name a channel of another property.

use bellhop_protocol::{Channel, Priority, Role};

use crate::auth::Principal;

/// What a request wants to do with a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Subscribe, read history, presence or read markers.
    Read,
    /// Publish a message or a typing notice.
    Publish,
    /// See who is on the channel: the `presence` list, and `join`, `leave` and `typing` notices.
    Presence,
}

/// The event a guest may raise above `high`, and only to the desk that answers it.
pub const EMERGENCY_EVENT: &str = "EMERGENCY_ALERT";

/// A refusal, with the reason shown to the client as `error forbidden`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Whether `p` may `access` `channel`.
pub fn check(p: &Principal, access: Access, channel: &Channel) -> Result<(), Denied> {
    let own_user = matches!(channel, Channel::User(id) if *id == p.user_id);
    let allowed = match (p.role, access) {
        (Role::Manager | Role::Admin | Role::Service, _) => true,
        (Role::Guest, Access::Presence) => match channel {
            Channel::Room(r) => p.rooms.contains(r),
            Channel::User(_) => own_user,
            Channel::Broadcast | Channel::Dept(_) => false,
        },
        (Role::Staff, Access::Presence) => return check(p, Access::Read, channel),
        (Role::Guest, Access::Read) => match channel {
            Channel::Room(r) => p.rooms.contains(r),
            Channel::User(_) => own_user,
            Channel::Broadcast => true,
            Channel::Dept(_) => false,
        },
        (Role::Guest, Access::Publish) => match channel {
            Channel::Room(r) => p.rooms.contains(r),
            Channel::Dept(_) => true,
            Channel::User(_) | Channel::Broadcast => false,
        },
        (Role::Staff, Access::Read) => match channel {
            Channel::Room(_) | Channel::Broadcast => true,
            Channel::Dept(d) => p.depts.contains(d),
            Channel::User(_) => own_user,
        },
        (Role::Staff, Access::Publish) => match channel {
            Channel::Room(_) | Channel::User(_) => true,
            Channel::Dept(d) => p.depts.contains(d),
            Channel::Broadcast => false,
        },
    };
    if allowed {
        Ok(())
    } else {
        let verb = match access {
            Access::Read => "read",
            Access::Publish => "publish to",
            Access::Presence => "see the presence of",
        };
        Err(Denied(format!(
            "a {} may not {verb} {channel}",
            p.role.as_str()
        )))
    }
}

/// Whether a publish is a guest's emergency, which keeps its urgent priority under its own
/// strict limit; refused when a guest sends one anywhere but `desk` (the front desk).
pub fn guest_emergency(
    p: &Principal,
    event: &str,
    channel: &Channel,
    desk: &Channel,
) -> Result<bool, Denied> {
    if p.role != Role::Guest || event != EMERGENCY_EVENT {
        return Ok(false);
    }
    if channel == desk {
        Ok(true)
    } else {
        Err(Denied(format!(
            "a guest's {EMERGENCY_EVENT} goes to {desk}, which answers it at once, not to {channel}"
        )))
    }
}

/// The priority a publish gets: the event's default unless the publisher asked for another.
/// Anyone may lower it; raising it is for staff (up to `high`) and for managers, admins and
/// services (up to `urgent`). A guest's publishes are at most `high`, whatever the event's
/// default, except its emergency (see [`guest_emergency`]), so no guest jumps every queue.
pub fn priority(
    p: &Principal,
    event: &str,
    requested: Option<Priority>,
) -> Result<Priority, Denied> {
    let mut default = Priority::default_for_event(event);
    if p.role == Role::Guest && event != EMERGENCY_EVENT {
        default = default.min(Priority::High);
    }
    let Some(requested) = requested else {
        return Ok(default);
    };
    if requested <= default {
        return Ok(requested);
    }
    let ceiling = match p.role {
        Role::Guest => default,
        Role::Staff => Priority::High.max(default),
        Role::Manager | Role::Admin | Role::Service => Priority::Urgent,
    };
    if requested <= ceiling {
        Ok(requested)
    } else {
        Err(Denied(format!(
            "a {} may not raise {event} above {}",
            p.role.as_str(),
            ceiling.as_str()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Access::*;

    fn principal(role: Role) -> Principal {
        Principal {
            user_id: "me".into(),
            role,
            property: "h1".into(),
            rooms: ["101".to_string()].into(),
            depts: ["housekeeping".to_string()].into(),
            expires_at: u64::MAX,
        }
    }

    fn ch(s: &str) -> Channel {
        s.parse().unwrap()
    }

    /// The whole policy table of DESIGN section 4, row by row.
    #[test]
    fn the_policy_table() {
        let cases: &[(Role, Access, &str, bool)] = &[
            (Role::Guest, Read, "user:me", true),
            (Role::Guest, Read, "user:other", false),
            (Role::Guest, Read, "room:101", true),
            (Role::Guest, Read, "room:102", false),
            (Role::Guest, Read, "broadcast", true),
            (Role::Guest, Read, "dept:housekeeping", false),
            (Role::Guest, Publish, "room:101", true),
            (Role::Guest, Publish, "room:102", false),
            (Role::Guest, Publish, "dept:housekeeping", true),
            (Role::Guest, Publish, "dept:maintenance", true),
            (Role::Guest, Publish, "user:me", false),
            (Role::Guest, Publish, "broadcast", false),
            (Role::Staff, Read, "user:me", true),
            (Role::Staff, Read, "user:other", false),
            (Role::Staff, Read, "dept:housekeeping", true),
            (Role::Staff, Read, "dept:maintenance", false),
            (Role::Staff, Read, "room:999", true),
            (Role::Staff, Read, "broadcast", true),
            (Role::Staff, Publish, "room:999", true),
            (Role::Staff, Publish, "dept:housekeeping", true),
            (Role::Staff, Publish, "dept:maintenance", false),
            (Role::Staff, Publish, "user:other", true),
            (Role::Staff, Publish, "broadcast", false),
            // Presence: guests see it on their rooms (people they share a room with, and the
            // staff serving it), never on broadcast; staff as they read.
            (Role::Guest, Presence, "room:101", true),
            (Role::Guest, Presence, "room:102", false),
            (Role::Guest, Presence, "user:me", true),
            (Role::Guest, Presence, "broadcast", false),
            (Role::Staff, Presence, "broadcast", true),
            (Role::Staff, Presence, "dept:housekeeping", true),
            (Role::Staff, Presence, "dept:maintenance", false),
        ];
        for &(role, access, channel, allowed) in cases {
            let got = check(&principal(role), access, &ch(channel)).is_ok();
            assert_eq!(got, allowed, "{role:?} {access:?} {channel}");
        }
        for role in [Role::Manager, Role::Admin, Role::Service] {
            for channel in ["user:other", "dept:maintenance", "room:999", "broadcast"] {
                for access in [Read, Publish, Presence] {
                    assert!(
                        check(&principal(role), access, &ch(channel)).is_ok(),
                        "{role:?} {channel}"
                    );
                }
            }
        }
    }

    #[test]
    fn guests_never_jump_the_queue_except_with_an_emergency_to_the_desk() {
        let guest = principal(Role::Guest);
        let desk = ch("dept:frontdesk");
        // EMERGENCY_ALERT defaults to urgent; for a guest it is urgent only as an emergency.
        assert_eq!(
            priority(&guest, EMERGENCY_EVENT, None),
            Ok(Priority::Urgent)
        );
        assert_eq!(
            guest_emergency(&guest, EMERGENCY_EVENT, &desk, &desk),
            Ok(true)
        );
        let elsewhere = guest_emergency(&guest, EMERGENCY_EVENT, &ch("dept:maintenance"), &desk);
        assert!(elsewhere.unwrap_err().0.contains("dept:frontdesk"));
        assert_eq!(
            guest_emergency(&guest, "CHAT_MESSAGE", &desk, &desk),
            Ok(false)
        );
        let staff = principal(Role::Staff);
        assert_eq!(
            guest_emergency(&staff, EMERGENCY_EVENT, &ch("dept:housekeeping"), &desk),
            Ok(false)
        );
        // Every other event of a guest is capped at high.
        assert_eq!(priority(&guest, "SYSTEM_ALERT", None), Ok(Priority::High));
        assert!(priority(&guest, "CHAT_MESSAGE", Some(Priority::Urgent)).is_err());
    }

    #[test]
    fn priorities_may_be_lowered_by_anyone_and_raised_only_by_role() {
        let guest = principal(Role::Guest);
        let staff = principal(Role::Staff);
        let manager = principal(Role::Manager);
        assert_eq!(
            priority(&guest, "SERVICE_REQUEST", None),
            Ok(Priority::Normal)
        );
        assert_eq!(
            priority(&guest, "EMERGENCY_ALERT", None),
            Ok(Priority::Urgent)
        );
        assert_eq!(
            priority(&guest, "SERVICE_REQUEST", Some(Priority::Low)),
            Ok(Priority::Low)
        );
        assert!(priority(&guest, "SERVICE_REQUEST", Some(Priority::High)).is_err());
        assert_eq!(
            priority(&staff, "SERVICE_REQUEST", Some(Priority::High)),
            Ok(Priority::High)
        );
        assert!(priority(&staff, "SERVICE_REQUEST", Some(Priority::Urgent)).is_err());
        assert_eq!(
            priority(&manager, "CHAT_MESSAGE", Some(Priority::Urgent)),
            Ok(Priority::Urgent)
        );
    }
}
