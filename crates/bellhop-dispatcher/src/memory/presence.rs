//! The embedded broker's presence of one channel: which sessions of which users are on it.
//!
//! Most channels hold next to nobody: a connection's own `user:` channel one session, a room a
//! few. Those are a list of (user, session) pairs, searched, with no table. A channel with more
//! than [`FEW`] sessions (`broadcast`, a department) is a table by user, so joins stay constant
//! time however many are present; it is a list again once it is empty.
//!
//! A session id the gateway makes is a UUID in its canonical text (lowercase, hyphenated): such
//! an id is kept as its 16 bytes, not as 36 characters of text of its own. Any other id is kept
//! as text. Either way an id equals exactly the text it was given as.

use std::collections::HashMap;

use smallvec::SmallVec;

/// Most sessions held as a list; one more makes a table.
const FEW: usize = 16;

/// A session id as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum SessionId {
    /// A UUID whose canonical text is the id.
    Uuid([u8; 16]),
    /// Any other id.
    Text(Box<str>),
}

impl SessionId {
    fn new(session: &str) -> Self {
        match uuid::Uuid::try_parse(session) {
            Ok(id) if is_canonical(&id, session) => SessionId::Uuid(id.into_bytes()),
            _ => SessionId::Text(session.into()),
        }
    }
}

/// Whether `text` is `id`'s canonical text (so that the bytes stand for exactly that text).
fn is_canonical(id: &uuid::Uuid, text: &str) -> bool {
    let mut buf = uuid::Uuid::encode_buffer();
    id.hyphenated().encode_lower(&mut buf) == text
}

/// One user's sessions on a channel, in a table: almost always one (a user's devices are
/// bounded by `MAX_CONNECTIONS_PER_USER`), so held inline and searched.
type Sessions = SmallVec<[SessionId; 1]>;

/// The sessions on one channel, by user.
#[derive(Debug)]
pub(super) enum Presence {
    /// At most [`FEW`] (user, session) pairs.
    Few(Vec<(Box<str>, SessionId)>),
    /// More: sessions by user (boxed: the list is what most channels hold, and a table inline
    /// would double every channel's presence field).
    #[allow(
        clippy::box_collection,
        reason = "the table's own 48 B inline would be in every channel's state"
    )]
    Many(Box<HashMap<Box<str>, Sessions>>),
}

impl Default for Presence {
    fn default() -> Self {
        Presence::Few(Vec::new())
    }
}

impl Presence {
    /// Records `session` of `user`; true when it is the user's first session here.
    pub(super) fn join(&mut self, user: &str, session: &str) -> bool {
        let id = SessionId::new(session);
        match self {
            Presence::Few(pairs) => {
                let first = !pairs.iter().any(|(u, _)| **u == *user);
                if pairs.iter().any(|(u, s)| **u == *user && *s == id) {
                    return false;
                }
                if pairs.len() < FEW {
                    // Exactly the room needed: most lists never grow past one or a few.
                    pairs.reserve_exact(1);
                    pairs.push((user.into(), id));
                    return first;
                }
                let mut many: HashMap<Box<str>, Sessions> = HashMap::with_capacity(FEW + 1);
                for (u, s) in pairs.drain(..) {
                    many.entry(u).or_default().push(s);
                }
                many.entry(user.into()).or_default().push(id);
                *self = Presence::Many(Box::new(many));
                first
            }
            Presence::Many(many) => {
                let sessions = many.entry(user.into()).or_default();
                let first = sessions.is_empty();
                if !sessions.contains(&id) {
                    sessions.push(id);
                }
                first
            }
        }
    }

    /// Removes `session` of `user`; true when it was the user's last session here.
    pub(super) fn leave(&mut self, user: &str, session: &str) -> bool {
        let id = SessionId::new(session);
        match self {
            Presence::Few(pairs) => {
                let Some(at) = pairs.iter().position(|(u, s)| **u == *user && *s == id) else {
                    return false;
                };
                pairs.swap_remove(at);
                let last = !pairs.iter().any(|(u, _)| **u == *user);
                if pairs.is_empty() {
                    *pairs = Vec::new();
                }
                last
            }
            Presence::Many(many) => {
                let Some(sessions) = many.get_mut(user) else {
                    return false;
                };
                let before = sessions.len();
                sessions.retain(|s| *s != id);
                let last = sessions.len() < before && sessions.is_empty();
                if sessions.is_empty() {
                    many.remove(user);
                }
                if many.is_empty() {
                    *self = Presence::default();
                }
                last
            }
        }
    }

    /// The users present, sorted, each once.
    pub(super) fn users(&self) -> Vec<String> {
        let mut users: Vec<String> = match self {
            Presence::Few(pairs) => pairs.iter().map(|(u, _)| u.to_string()).collect(),
            Presence::Many(many) => many.keys().map(|u| u.to_string()).collect(),
        };
        users.sort();
        users.dedup();
        users
    }

    /// Whether nobody is present.
    pub(super) fn is_empty(&self) -> bool {
        match self {
            Presence::Few(pairs) => pairs.is_empty(),
            Presence::Many(many) => many.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "5b0e4c5e-8f4e-4c57-9d1a-0a3d2f6b7c10";
    const B: &str = "0f1e2d3c-4b5a-4968-8776-655443322110";

    #[test]
    fn first_join_and_last_leave_per_user() {
        let mut p = Presence::default();
        assert!(p.join("u1", A));
        assert!(!p.join("u1", A), "the same session again is not a first");
        assert!(!p.join("u1", B));
        assert!(
            p.join("u2", A),
            "another user's first, whatever the session"
        );
        assert_eq!(p.users(), ["u1", "u2"]);
        assert!(!p.leave("u1", A));
        assert!(
            !p.leave("u1", A),
            "a session that left does not leave again"
        );
        assert!(p.leave("u1", B));
        assert!(!p.leave("u3", A), "nobody's session");
        assert_eq!(p.users(), ["u2"]);
        assert!(p.leave("u2", A));
        assert!(p.is_empty());
    }

    #[test]
    fn ids_equal_exactly_their_text() {
        let upper = A.to_uppercase();
        let braced = format!("{{{A}}}");
        let simple = A.replace('-', "");
        let mut p = Presence::default();
        assert!(p.join("u1", A));
        for other in [upper.as_str(), braced.as_str(), simple.as_str(), "s1"] {
            assert!(!p.join("u1", other));
        }
        // Each spelling is a session of its own: the canonical one leaving leaves the others.
        assert!(!p.leave("u1", A));
        assert!(!p.leave("u1", A));
        for other in [upper.as_str(), braced.as_str(), simple.as_str()] {
            assert!(!p.leave("u1", other));
        }
        assert!(p.leave("u1", "s1"));
        assert!(matches!(SessionId::new(A), SessionId::Uuid(_)));
        assert!(matches!(SessionId::new(&upper), SessionId::Text(_)));
    }

    #[test]
    fn many_sessions_make_a_table_and_an_empty_one_a_list_again() {
        let mut p = Presence::default();
        let users: Vec<String> = (0..40).map(|i| format!("u{i:02}")).collect();
        for user in &users {
            assert!(p.join(user, A));
            assert!(!p.join(user, B));
        }
        assert!(matches!(p, Presence::Many(_)));
        let mut sorted = users.clone();
        sorted.sort();
        assert_eq!(p.users(), sorted);
        for user in &users {
            assert!(!p.join(user, A), "already present after the change of form");
        }
        for user in &users {
            assert!(!p.leave(user, A));
            assert!(p.leave(user, B));
        }
        assert!(p.is_empty());
        assert!(matches!(p, Presence::Few(_)));
    }

    #[test]
    fn a_list_changes_form_at_its_limit_keeping_everyone() {
        let mut p = Presence::default();
        for i in 0..FEW {
            assert!(p.join(&format!("u{i}"), A));
        }
        assert!(matches!(p, Presence::Few(_)));
        // A second session of a present user is the one that overflows the list.
        assert!(!p.join("u0", B));
        assert!(matches!(p, Presence::Many(_)));
        assert_eq!(p.users().len(), FEW);
        assert!(!p.leave("u0", A));
        assert!(p.leave("u0", B));
    }
}
