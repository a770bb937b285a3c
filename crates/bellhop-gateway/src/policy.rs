//! The channel policy of protocol v1: who may read and who may publish on which channel, and who
//! may change a message's priority. Pure functions over a [`Principal`].
//!
//! Reading covers `subscribe`, `history`, `presence` and `read`; publishing covers `publish` and
//! `typing`. The table (see `docs/PROTOCOL.md`):
//!
//! | role | reads | publishes |
//! |---|---|---|
//! | guest | `user:<self>`, its `rooms`, `broadcast` | its `rooms`, any `dept:` |
//! | staff | `user:<self>`, its `depts`, any `room:`, `broadcast` | any `room:`, its `depts`, any `user:` |
//! | manager, admin, service | everything in the property | everything in the property |
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
}

/// A refusal, with the reason shown to the client as `error forbidden`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Whether `p` may `access` `channel`.
pub fn check(p: &Principal, access: Access, channel: &Channel) -> Result<(), Denied> {
    let own_user = matches!(channel, Channel::User(id) if *id == p.user_id);
    let allowed = match (p.role, access) {
        (Role::Manager | Role::Admin | Role::Service, _) => true,
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
        };
        Err(Denied(format!(
            "a {} may not {verb} {channel}",
            p.role.as_str()
        )))
    }
}

/// The priority a publish gets: the event's default unless the publisher asked for another.
/// Anyone may lower it; raising it is for staff (up to `high`) and for managers, admins and
/// services (up to `urgent`).
pub fn priority(
    p: &Principal,
    event: &str,
    requested: Option<Priority>,
) -> Result<Priority, Denied> {
    let default = Priority::default_for_event(event);
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
        ];
        for &(role, access, channel, allowed) in cases {
            let got = check(&principal(role), access, &ch(channel)).is_ok();
            assert_eq!(got, allowed, "{role:?} {access:?} {channel}");
        }
        for role in [Role::Manager, Role::Admin, Role::Service] {
            for channel in ["user:other", "dept:maintenance", "room:999", "broadcast"] {
                for access in [Read, Publish] {
                    assert!(
                        check(&principal(role), access, &ch(channel)).is_ok(),
                        "{role:?} {channel}"
                    );
                }
            }
        }
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
