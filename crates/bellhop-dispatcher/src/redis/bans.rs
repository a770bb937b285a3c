//! Client bans every node enforces: stored in one sorted set (`<prefix>:{bans}`, subjects scored
//! by expiry in ms on the node's clock) and announced on its pub/sub channel
//! (`<prefix>:{bans}:live`, `<ms left> <subject>`), so a ban placed on one node reaches the
//! others at once and a node that starts later reads the ones in force.

use std::time::Duration;

use fred::prelude::{ClientLike, Value};
use fred::types::{ClusterHash, CustomCommand};

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::replies::malformed;
use super::{Inner, RedisBroker};
use crate::bans::BanStore;
use crate::broker::BrokerError;

#[async_trait]
impl BanStore for RedisBroker {
    async fn ban(&self, subject: &str, ttl: Duration) -> Result<(), BrokerError> {
        self.inner.ban(subject, ttl).await
    }

    async fn bans(&self) -> Result<Vec<(String, Duration)>, BrokerError> {
        self.inner.bans().await
    }

    fn feed(&self) -> Option<broadcast::Receiver<(String, Duration)>> {
        Some(self.inner.ban_tx.subscribe())
    }
}

impl Inner {
    /// Bans `subject` for `ttl` (a longer ban in place is kept) and announces it to every node.
    pub(super) async fn ban(&self, subject: &str, ttl: Duration) -> Result<(), BrokerError> {
        let ttl_ms = ttl.as_millis().min(u64::MAX as u128) as u64;
        let until = crate::now_ms().saturating_add(ttl_ms);
        let command =
            |name: &'static str| CustomCommand::new_static(name, ClusterHash::FirstKey, false);
        // GT: a longer ban already in place is kept. Score = expiry on the node's clock (node
        // clocks must agree anyway, see the publish deadline).
        let _: Value = self
            .client
            .custom(
                command("ZADD"),
                vec![
                    self.bans_key.clone(),
                    "GT".into(),
                    until.to_string(),
                    subject.to_owned(),
                ],
            )
            .await
            .map_err(|e| self.error(&e))?;
        let _: Value = self
            .client
            .custom(
                command("ZREMRANGEBYSCORE"),
                vec![
                    self.bans_key.clone(),
                    "-inf".into(),
                    crate::now_ms().to_string(),
                ],
            )
            .await
            .map_err(|e| self.error(&e))?;
        // The set lives as long as its longest ban could (bans are at most a week).
        let _: Value = self
            .client
            .custom(
                command("PEXPIRE"),
                vec![self.bans_key.clone(), (7 * 24 * 3600 * 1000u64).to_string()],
            )
            .await
            .map_err(|e| self.error(&e))?;
        self.publish_live(self.bans_channel.clone(), format!("{ttl_ms} {subject}"))
            .await
            .map(|_| ())
            .map_err(|e| self.error(&e))
    }

    /// The bans in force, with the time each has left.
    pub(super) async fn bans(&self) -> Result<Vec<(String, Duration)>, BrokerError> {
        let now = crate::now_ms();
        let reply: Value = self
            .client
            .custom(
                CustomCommand::new_static("ZRANGEBYSCORE", ClusterHash::FirstKey, false),
                vec![
                    self.bans_key.clone(),
                    format!("({now}"),
                    "+inf".into(),
                    "WITHSCORES".into(),
                ],
            )
            .await
            .map_err(|e| self.error(&e))?;
        ban_list(reply, now)
    }
}

/// The reply of `ZRANGEBYSCORE ... WITHSCORES` on the bans set, `[subject, expiry, ...]`, as
/// subjects with the time left after `now` (ms).
fn ban_list(reply: Value, now: u64) -> Result<Vec<(String, Duration)>, BrokerError> {
    let items: Vec<Value> = match reply {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        other => return Err(malformed("ban list", &other)),
    };
    let mut bans = Vec::with_capacity(items.len() / 2);
    for pair in items.chunks(2) {
        let [subject, score] = pair else {
            return Err(malformed("ban list", &Value::Array(pair.to_vec())));
        };
        let subject = subject
            .as_string()
            .ok_or_else(|| malformed("ban subject", subject))?;
        let until = score
            .as_f64()
            .ok_or_else(|| malformed("ban expiry", score))? as u64;
        bans.push((subject, Duration::from_millis(until.saturating_sub(now))));
    }
    Ok(bans)
}

/// A ban announcement, `<ms left> <subject>`, as the subject and its time left.
pub(super) fn announcement(value: &Value) -> Option<(String, Duration)> {
    value.as_str().and_then(|text| {
        let (ms, subject) = text.split_once(' ')?;
        Some((subject.to_owned(), Duration::from_millis(ms.parse().ok()?)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ban_list_gives_the_time_each_ban_has_left() {
        let reply = Value::Array(vec![
            Value::from("10.0.0.1"),
            Value::from("1700000060000"),
            Value::from("10.0.0.2"),
            Value::Double(1_700_000_000_500.0),
        ]);
        assert_eq!(
            ban_list(reply, 1_700_000_000_000).unwrap(),
            [
                ("10.0.0.1".to_owned(), Duration::from_secs(60)),
                ("10.0.0.2".to_owned(), Duration::from_millis(500)),
            ]
        );
        assert!(ban_list(Value::Null, 0).unwrap().is_empty());
        for bad in [
            Value::Integer(3),
            Value::Array(vec![Value::from("10.0.0.1")]),
            Value::Array(vec![Value::from("10.0.0.1"), Value::from("soon")]),
        ] {
            assert!(
                matches!(ban_list(bad.clone(), 0), Err(BrokerError::Internal(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn announcements_parse_and_garbage_is_ignored() {
        assert_eq!(
            announcement(&Value::from("60000 10.0.0.1")),
            Some(("10.0.0.1".to_owned(), Duration::from_secs(60)))
        );
        assert_eq!(announcement(&Value::from("soon 10.0.0.1")), None);
        assert_eq!(announcement(&Value::from("60000")), None);
        assert_eq!(announcement(&Value::Null), None);
    }
}
