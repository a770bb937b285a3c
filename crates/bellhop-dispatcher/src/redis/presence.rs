//! Presence held by this broker: the sessions it added to channels ([`HeldSession`]), joining and
//! leaving through the channel script, and the task that refreshes their expiry every
//! `presence_refresh`, so a session stays present while its node lives and disappears one
//! `presence_ttl` after the node dies (see "Presence and read markers" in [`super`]).

use std::sync::Arc;

use super::{replies, Inner};
use crate::broker::{BrokerError, ChannelKey};

/// A session this broker added to a channel's presence, and keeps refreshing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct HeldSession {
    /// The channel.
    key: ChannelKey,
    /// The user.
    user: String,
    /// The session.
    session: String,
}

impl Inner {
    /// Adds a session to a channel's presence and holds it (refreshed until it leaves); true
    /// when it is the user's first session there.
    pub(super) async fn presence_join(
        &self,
        key: &ChannelKey,
        user_id: &str,
        session: &str,
    ) -> Result<bool, BrokerError> {
        let held = HeldSession {
            key: key.clone(),
            user: user_id.to_owned(),
            session: session.to_owned(),
        };
        // Held before the call, so a refresh running meanwhile keeps it too.
        self.sessions.lock().insert(held.clone());
        let args = self.script_args("join", [user_id.into(), session.into()]);
        match self.eval(&self.keys(key), args).await {
            Ok(first) => replies::first_or_last(&first),
            Err(e) => {
                self.sessions.lock().remove(&held);
                Err(e)
            }
        }
    }

    /// Removes a session from a channel's presence and stops holding it; true when it was the
    /// user's last session there.
    pub(super) async fn presence_leave(
        &self,
        key: &ChannelKey,
        user_id: &str,
        session: &str,
    ) -> Result<bool, BrokerError> {
        self.sessions.lock().remove(&HeldSession {
            key: key.clone(),
            user: user_id.to_owned(),
            session: session.to_owned(),
        });
        let args = self.script_args("leave", [user_id.into(), session.into()]);
        let last = self.eval(&self.keys(key), args).await?;
        replies::first_or_last(&last)
    }

    /// Refreshes the expiry of every session this broker added.
    async fn refresh_sessions(&self) {
        let held: Vec<HeldSession> = self.sessions.lock().iter().cloned().collect();
        if held.is_empty() {
            return;
        }
        let calls = held
            .iter()
            .map(|s| {
                let args =
                    self.script_args("join", [s.user.as_str().into(), s.session.as_str().into()]);
                (self.keys(&s.key).script_keys(), args)
            })
            .collect();
        let failed = self
            .eval_many(calls)
            .await
            .into_iter()
            .filter(Result::is_err)
            .count();
        if failed > 0 {
            tracing::warn!(
                failed,
                sessions = held.len(),
                "could not refresh presence; retrying at the next refresh"
            );
        }
    }
}

/// Refreshes this broker's sessions every `presence_refresh`.
pub(super) async fn refresh_presence(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.config.presence_refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        inner.refresh_sessions().await;
    }
}
