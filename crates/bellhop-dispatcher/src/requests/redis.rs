//! The Redis request store: requests, their index and their escalation timers in keys that share
//! the property's hash tag (`<prefix>:{req|<property>}:...`), every operation one call of
//! `requests.lua`, so it is atomic (in a Redis Cluster too: one property, one slot). A set of the
//! properties with requests (`<prefix>:requests:properties`) tells every node where to look for
//! due timers.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{ClientLike, Error as FredError, LuaInterface, Value};

use super::state::ServiceRequest;
use super::store::{Claim, Filter, RequestStore, Versioned, MAX_LIST};
use crate::broker::BrokerError;
use crate::redis::{broker_error, build_client, fred_config, RedisConfig};

const SCRIPT: &str = include_str!("requests.lua");

/// Service requests in Redis, shared by every node.
pub struct RedisRequestStore {
    client: fred::clients::Client,
    sha: parking_lot::Mutex<String>,
    prefix: String,
    retention_ms: u64,
    retry_after: Duration,
}

impl std::fmt::Debug for RedisRequestStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRequestStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The keys of one property.
struct Keys {
    base: String,
}

impl Keys {
    fn new(prefix: &str, property: &str) -> Keys {
        Keys {
            base: format!("{prefix}:{{req|{property}}}"),
        }
    }
    fn hash_prefix(&self) -> String {
        format!("{}:r:", self.base)
    }
    fn hash(&self, id: &str) -> String {
        format!("{}:r:{id}", self.base)
    }
    fn all(&self) -> String {
        format!("{}:all", self.base)
    }
    fn due(&self) -> String {
        format!("{}:due", self.base)
    }
}

fn malformed(what: &str) -> BrokerError {
    BrokerError::Internal(format!("redis: malformed {what} in a request script reply"))
}

/// `[doc, v, level, esc]` as a versioned request.
fn parse(parts: &[Value]) -> Result<Option<Versioned>, BrokerError> {
    let [doc, v, level, esc] = parts else {
        return Err(malformed("request"));
    };
    let Some(doc) = doc.as_str() else {
        return Ok(None);
    };
    let mut request: ServiceRequest = serde_json::from_str(&doc)
        .map_err(|e| BrokerError::Internal(format!("redis: a stored request is invalid: {e}")))?;
    let number = |x: &Value| x.as_str().and_then(|s| s.parse::<u64>().ok());
    let version = number(v).ok_or_else(|| malformed("version"))?;
    request.level = number(level).ok_or_else(|| malformed("level"))? as u32;
    request.escalated_at_ms = number(esc);
    Ok(Some(Versioned { request, version }))
}

fn opt(x: Option<u64>) -> String {
    x.map(|n| n.to_string()).unwrap_or_default()
}

impl RedisRequestStore {
    /// Connects with the broker's settings (its URL, TLS, cluster mode, prefix and retention)
    /// and loads the script.
    pub async fn connect(config: &RedisConfig) -> Result<RedisRequestStore, BrokerError> {
        let fred_config = fred_config(config)?;
        // Not retried by the client: the script's writes are not all idempotent.
        let client = build_client(config, fred_config, 1, 32)?;
        let _connection = client
            .init()
            .await
            .map_err(|e| broker_error(&e, config.retry_after))?;
        let sha: String = client
            .script_load_cluster(SCRIPT)
            .await
            .map_err(|e| broker_error(&e, config.retry_after))?;
        Ok(RedisRequestStore {
            client,
            sha: parking_lot::Mutex::new(sha),
            prefix: config.key_prefix.clone(),
            retention_ms: config.retention.as_millis() as u64,
            retry_after: config.retry_after,
        })
    }

    /// Runs the script, loading it again once if the server lost it.
    async fn call(&self, keys: Vec<String>, args: Vec<String>) -> Result<Value, BrokerError> {
        let sha = self.sha.lock().clone();
        let first: Result<Value, FredError> =
            self.client.evalsha(sha, keys.clone(), args.clone()).await;
        match first {
            Ok(v) => Ok(v),
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                let sha: String = self
                    .client
                    .script_load_cluster(SCRIPT)
                    .await
                    .map_err(|e| broker_error(&e, self.retry_after))?;
                *self.sha.lock() = sha.clone();
                self.client
                    .evalsha(sha, keys, args)
                    .await
                    .map_err(|e| broker_error(&e, self.retry_after))
            }
            Err(e) => Err(broker_error(&e, self.retry_after)),
        }
    }

    fn properties_key(&self) -> String {
        format!("{}:requests:properties", self.prefix)
    }

    fn keys(&self, property: &str) -> Keys {
        Keys::new(&self.prefix, property)
    }
}

fn doc(request: &ServiceRequest) -> Result<String, BrokerError> {
    serde_json::to_string(request)
        .map_err(|e| BrokerError::Internal(format!("cannot encode a request: {e}")))
}

#[async_trait]
impl RequestStore for RedisRequestStore {
    async fn insert(
        &self,
        request: &ServiceRequest,
        due: Option<u64>,
    ) -> Result<bool, BrokerError> {
        let k = self.keys(&request.property);
        self.call(
            vec![self.properties_key()],
            vec![
                "padd".into(),
                request.property.clone(),
                self.retention_ms.to_string(),
            ],
        )
        .await?;
        let reply = self
            .call(
                vec![k.hash(&request.id), k.all(), k.due()],
                vec![
                    "insert".into(),
                    request.id.clone(),
                    doc(request)?,
                    request.status.as_str().into(),
                    request.department.clone(),
                    request.room.clone().unwrap_or_default(),
                    request.opened_at_ms.to_string(),
                    opt(due),
                    self.retention_ms.to_string(),
                    request.opened_at_ms.to_string(),
                ],
            )
            .await?;
        Ok(reply.as_u64() == Some(1))
    }

    async fn get(&self, property: &str, id: &str) -> Result<Option<Versioned>, BrokerError> {
        let k = self.keys(property);
        let reply = self
            .call(vec![k.hash(id)], vec!["get".into()])
            .await?
            .into_array();
        parse(&reply)
    }

    async fn replace(
        &self,
        current: &Versioned,
        next: &ServiceRequest,
        due: Option<u64>,
    ) -> Result<bool, BrokerError> {
        let k = self.keys(&current.request.property);
        let reply = self
            .call(
                vec![k.hash(&current.request.id), k.due()],
                vec![
                    "replace".into(),
                    current.request.id.clone(),
                    current.version.to_string(),
                    doc(next)?,
                    next.status.as_str().into(),
                    opt(due),
                    self.retention_ms.to_string(),
                ],
            )
            .await?;
        Ok(reply.as_u64() == Some(1))
    }

    async fn list(
        &self,
        property: &str,
        filter: &Filter,
    ) -> Result<Vec<ServiceRequest>, BrokerError> {
        let k = self.keys(property);
        let limit = filter.limit.min(MAX_LIST);
        let reply = self
            .call(
                vec![k.all()],
                vec![
                    "list".into(),
                    k.hash_prefix(),
                    filter
                        .status
                        .map(|s| s.as_str().to_owned())
                        .unwrap_or_default(),
                    filter.department.clone().unwrap_or_default(),
                    filter.room.clone().unwrap_or_default(),
                    limit.to_string(),
                    crate::now_ms().to_string(),
                    self.retention_ms.to_string(),
                ],
            )
            .await?
            .into_array();
        let mut out = Vec::new();
        for parts in reply.chunks(4) {
            if let Some(v) = parse(parts)? {
                out.push(v.request);
            }
        }
        Ok(out)
    }

    async fn claim_due(
        &self,
        now: u64,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Claim>, BrokerError> {
        let properties = self
            .call(vec![self.properties_key()], vec!["plist".into()])
            .await?
            .into_array();
        let lease_until = now + lease.as_millis() as u64;
        let mut claims = Vec::new();
        for property in properties {
            let Some(property) = property.as_str().map(|p| p.to_string()) else {
                continue;
            };
            if claims.len() >= limit {
                break;
            }
            let k = self.keys(&property);
            let reply = self
                .call(
                    vec![k.due()],
                    vec![
                        "claim".into(),
                        k.hash_prefix(),
                        now.to_string(),
                        lease_until.to_string(),
                        (limit - claims.len()).to_string(),
                    ],
                )
                .await?
                .into_array();
            for parts in reply.chunks(4) {
                if let Some(v) = parse(parts)? {
                    let level = v.request.level + 1;
                    claims.push(Claim {
                        request: v.request,
                        level,
                    });
                }
            }
        }
        Ok(claims)
    }

    async fn confirm(&self, claim: &Claim, now: u64, next: Option<u64>) -> Result<(), BrokerError> {
        let k = self.keys(&claim.request.property);
        self.call(
            vec![k.hash(&claim.request.id), k.due()],
            vec![
                "confirm".into(),
                claim.request.id.clone(),
                claim.level.to_string(),
                now.to_string(),
                opt(next),
                self.retention_ms.to_string(),
            ],
        )
        .await?;
        Ok(())
    }
}
