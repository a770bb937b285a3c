//! Reading a JWT's `exp` and `iat`, to re-authenticate before it expires, and getting the token
//! a connection authenticates with (the fixed one, the one held, or a fresh one from the
//! callback) and when to renew it. The SDK never verifies a token (the node does).

use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use tokio::time::Instant;

use crate::options::Token;
use crate::shared::Shared;

/// Longest token payload decoded (a token is a few hundred bytes).
const MAX_PAYLOAD: usize = 16 * 1024;

/// `exp` and `iat` (Unix seconds) of a JWT, or `None` when it has no `exp` or is not a JWT.
pub fn token_times(token: &str) -> Option<(u64, Option<u64>)> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > MAX_PAYLOAD {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some((exp, claims.get("iat").and_then(Value::as_u64)))
}

/// How long from `now` (Unix seconds, as f64 for sub-second precision) until the token should
/// be renewed: `lead` before `exp`, by default a minute or a tenth of the lifetime when shorter.
pub fn refresh_in(exp: u64, iat: Option<u64>, now: f64, lead: Option<Duration>) -> Duration {
    let exp = exp as f64;
    let lifetime = (exp - iat.map(|i| i as f64).unwrap_or(now)).max(0.0);
    let lead = lead
        .map(|l| l.as_secs_f64())
        .unwrap_or((lifetime / 10.0).min(60.0));
    Duration::from_secs_f64((exp - lead - now).max(0.0))
}

/// Seconds since the Unix epoch, as token times are.
pub(crate) fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Gets a token: the fixed one, the one held, or a fresh one from the callback.
pub(crate) async fn get_token(
    shared: &Shared,
    held: &mut Option<String>,
    force: &mut bool,
) -> Result<String, String> {
    match &shared.opts.token {
        Token::Fixed(t) => Ok(t.clone()),
        Token::Callback(f) => {
            let usable = held.as_ref().filter(|t| {
                !*force && token_times(t).is_none_or(|(exp, _)| (exp as f64) > now_unix())
            });
            if let Some(t) = usable {
                return Ok(t.clone());
            }
            let previous = held.take();
            let fresh = tokio::time::timeout(shared.opts.connect_timeout, f())
                .await
                .map_err(|_| "getToken timed out".to_owned())??;
            if fresh.is_empty() {
                return Err("getToken returned no token".into());
            }
            if *force && previous.as_deref() == Some(fresh.as_str()) {
                return Err("getToken returned the token the node refused".into());
            }
            *force = false;
            *held = Some(fresh.clone());
            Ok(fresh)
        }
    }
}

/// When the held token should be renewed.
pub(crate) fn refresh_at(shared: &Shared, token: &str) -> Option<Instant> {
    if !matches!(shared.opts.token, Token::Callback(_)) {
        return None;
    }
    let (exp, iat) = token_times(token)?;
    Some(Instant::now() + refresh_in(exp, iat, now_unix(), shared.opts.token_refresh_lead))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_exp_and_schedules_the_refresh() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"a","exp":1000,"iat":700}"#);
        let token = format!("x.{payload}.y");
        assert_eq!(token_times(&token), Some((1000, Some(700))));
        assert_eq!(token_times("not-a-jwt"), None);
        // 300 s lifetime: 30 s early.
        assert_eq!(
            refresh_in(1000, Some(700), 800.0, None),
            Duration::from_secs(170)
        );
        // an hour: a minute early.
        assert_eq!(
            refresh_in(4600, Some(1000), 1000.0, None),
            Duration::from_secs(3540)
        );
        assert_eq!(refresh_in(1000, None, 2000.0, None), Duration::ZERO);
    }
}
