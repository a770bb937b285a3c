//! Service requests as a workflow: a `SERVICE_REQUEST` publish opens a request (its id is the
//! message's `messageId`), `STAFF_ASSIGNED` and `SERVICE_REQUEST_UPDATED` move it, a guest's
//! request to its own room is routed to a department by rules ([`routing`]), and an open request
//! nobody answers escalates level by level ([`state::EscalationConfig`]).
//!
//! The lifecycle is a pure state machine ([`state`]); requests and escalation timers live in a
//! [`RequestStore`] shared by every node (memory for the embedded broker, Redis otherwise). Any
//! node fires due timers: a claim hands a timer to one node for a lease, the `ESCALATION` is
//! published with an idempotency key naming the request and level (so a second node firing the
//! same level after a crash stores nothing), and only then is the level confirmed. That is what
//! makes it exactly once per level across the cluster, through node crashes and restarts.
//!
//! Never here: WebSockets, HTTP, tokens. The gateway authorizes the publish and hands over an
//! [`Actor`] and an envelope.

pub mod routing;
pub mod state;
pub mod store;

mod redis;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bellhop_protocol::{Channel, Envelope, Priority, Role, Sender};
use serde_json::{json, Value};

pub use self::redis::RedisRequestStore;
pub use routing::{Route, RoutingTable, Rules, RulesError};
pub use state::{Action, Actor, EscalationConfig, Refusal, ServiceRequest, Status};
pub use store::{Claim, Filter, MemoryRequestStore, RequestStore, Versioned, MAX_LIST};

use crate::broker::{BrokerError, Publish, Published};
use crate::dispatcher::{Dispatcher, PublishError};

/// The event that opens a request.
pub const SERVICE_REQUEST: &str = "SERVICE_REQUEST";
/// The event that assigns someone to a request.
pub const STAFF_ASSIGNED: &str = "STAFF_ASSIGNED";
/// The event that changes a request's status.
pub const SERVICE_REQUEST_UPDATED: &str = "SERVICE_REQUEST_UPDATED";
/// The event an unanswered request raises, level by level.
pub const ESCALATION: &str = "ESCALATION";
/// Who escalations are sent by.
pub const ESCALATION_SENDER: &str = "bellhop";

/// Longest request id accepted in a payload (a `messageId` is a 36-character UUID).
const MAX_REQUEST_ID: usize = 64;
/// Escalations claimed per store call.
const CLAIM_BATCH: usize = 200;
/// Compare-and-set attempts of one update before giving up with `unavailable`.
const UPDATE_ATTEMPTS: usize = 8;

/// Settings of the service request workflow.
#[derive(Clone, Debug)]
pub struct RequestsConfig {
    /// When and where unanswered requests escalate.
    pub escalation: EscalationConfig,
    /// The configured departments (`DEPARTMENTS`): routing only picks these.
    pub departments: Vec<String>,
    /// A TOML or YAML rule file (`ROUTING_RULES_PATH`); the built-in rules without one.
    pub rules_path: Option<PathBuf>,
    /// How often the rule file's modification time is checked (5 s).
    pub rules_reload_interval: Duration,
    /// How often a node looks for due escalations (1 s; at most a tenth of
    /// `ESCALATION_AFTER_SECONDS`).
    pub tick: Duration,
    /// How long a claimed escalation is this node's alone before another may fire it (30 s):
    /// longer than publishing takes, far shorter than the idempotency window that catches a
    /// second firing.
    pub lease: Duration,
}

impl RequestsConfig {
    /// The defaults, for `departments`.
    pub fn new(departments: Vec<String>) -> Self {
        RequestsConfig {
            escalation: EscalationConfig::default(),
            departments,
            rules_path: None,
            rules_reload_interval: Duration::from_secs(5),
            tick: Duration::from_secs(1),
            lease: Duration::from_secs(30),
        }
    }

    /// How often to look for due escalations: `tick`, but at most a tenth of the escalation
    /// delay and at least 10 ms.
    fn effective_tick(&self) -> Duration {
        let tenth = Duration::from_millis(self.escalation.after_ms / 10);
        self.tick.min(tenth).max(Duration::from_millis(10))
    }
}

/// Why a request event was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The event or its payload is wrong; fix it.
    #[error("{0}")]
    BadRequest(String),
    /// The publisher may not do this to this request.
    #[error("{0}")]
    Forbidden(String),
    /// No such request in this property (or it left the retention window).
    #[error("unknown request {0:?}")]
    NotFound(String),
    /// Storing the message failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The request store failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl From<Refusal> for RequestError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Forbidden(m) => RequestError::Forbidden(m),
            Refusal::InvalidTransition(m) => RequestError::BadRequest(m),
        }
    }
}

/// Told what happens to requests, for metrics. Every method has an empty default.
pub trait RequestObserver: Send + Sync + std::fmt::Debug {
    /// A request was opened.
    fn opened(&self, _request: &ServiceRequest) {}
    /// A request left `open` (acknowledged, assigned, worked on, resolved or cancelled),
    /// `after` its opening.
    fn answered(&self, _request: &ServiceRequest, _after: Duration) {}
    /// A request escalated to `level`.
    fn escalated(&self, _request: &ServiceRequest, _level: u32) {}
}

/// A clock the workflow can be given instead of its own: milliseconds since the epoch.
pub type RequestsClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The workflow's clock, milliseconds since the epoch.
enum Clock {
    /// Tokio's: the wall clock when the workflow started plus tokio's elapsed time, so tests
    /// move it with `tokio::time::pause()` and `advance`.
    Tokio {
        epoch_ms: u64,
        start: tokio::time::Instant,
    },
    /// One given to [`Requests::start_with_clock`]: tests against a real Redis, whose IO a paused
    /// tokio clock would not wait for, hold it still and move it themselves.
    Given(RequestsClock),
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Clock::Tokio { epoch_ms, start } => f
                .debug_struct("Tokio")
                .field("epoch_ms", epoch_ms)
                .field("start", start)
                .finish(),
            Clock::Given(_) => f.write_str("Given"),
        }
    }
}

impl Clock {
    fn tokio() -> Clock {
        Clock::Tokio {
            epoch_ms: crate::now_ms(),
            start: tokio::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        match self {
            Clock::Tokio { epoch_ms, start } => epoch_ms + start.elapsed().as_millis() as u64,
            Clock::Given(clock) => clock(),
        }
    }
}

/// The service request workflow of one node.
#[derive(Debug)]
pub struct Requests {
    dispatcher: Arc<Dispatcher>,
    store: Arc<dyn RequestStore>,
    routing: Arc<RoutingTable>,
    config: RequestsConfig,
    clock: Clock,
    observer: OnceLock<Arc<dyn RequestObserver>>,
    /// The escalation and rule-watch loops, aborted on drop.
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Requests {
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

/// Whether a message is one the workflow handles: every `SERVICE_REQUEST`, and a
/// `STAFF_ASSIGNED` or `SERVICE_REQUEST_UPDATED` whose payload has a `requestId` (without one it
/// stays an ordinary message, as before requests were tracked).
pub fn is_request_event(event: &str, payload: &Value) -> bool {
    match event {
        SERVICE_REQUEST => true,
        STAFF_ASSIGNED | SERVICE_REQUEST_UPDATED => payload.get("requestId").is_some(),
        _ => false,
    }
}

/// The current time as RFC 3339 with milliseconds, UTC.
fn rfc3339(ms: u64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// A string field of an object payload.
fn field<'a>(payload: &'a Value, name: &str) -> Option<&'a str> {
    payload.get(name).and_then(Value::as_str)
}

impl Requests {
    /// The workflow on `store`, publishing through `dispatcher`. Reads the rule file now (a bad
    /// one is an error) and, inside a tokio runtime, starts the escalation loop and the rule
    /// file watch.
    pub fn start(
        dispatcher: Arc<Dispatcher>,
        store: Arc<dyn RequestStore>,
        config: RequestsConfig,
    ) -> Result<Arc<Requests>, String> {
        Self::start_on(dispatcher, store, config, Clock::tokio())
    }

    /// [`Requests::start`] on a given clock (ms since the epoch), which decides when requests
    /// are due; the escalation loop still looks every `tick` of real time.
    pub fn start_with_clock(
        dispatcher: Arc<Dispatcher>,
        store: Arc<dyn RequestStore>,
        config: RequestsConfig,
        clock: RequestsClock,
    ) -> Result<Arc<Requests>, String> {
        Self::start_on(dispatcher, store, config, Clock::Given(clock))
    }

    fn start_on(
        dispatcher: Arc<Dispatcher>,
        store: Arc<dyn RequestStore>,
        config: RequestsConfig,
        clock: Clock,
    ) -> Result<Arc<Requests>, String> {
        config.escalation.validate()?;
        let routing = RoutingTable::new(config.rules_path.clone(), config.departments.clone())
            .map_err(|e| format!("ROUTING_RULES_PATH: {e}"))?;
        let routing = Arc::new(routing);
        let requests = Arc::new(Requests {
            dispatcher,
            store,
            routing: routing.clone(),
            clock,
            observer: OnceLock::new(),
            tasks: parking_lot::Mutex::new(Vec::new()),
            config,
        });
        let mut tasks = Vec::new();
        if requests.config.rules_path.is_some() {
            tasks.push(routing.spawn_watch(requests.config.rules_reload_interval));
        }
        tasks.push(tokio::spawn(escalate_forever(
            Arc::downgrade(&requests),
            requests.config.effective_tick(),
        )));
        *requests.tasks.lock() = tasks;
        Ok(requests)
    }

    /// Sets who is told about requests (once; later calls are ignored).
    pub fn set_observer(&self, observer: Arc<dyn RequestObserver>) {
        let _ = self.observer.set(observer);
    }

    /// The settings in use.
    pub fn config(&self) -> &RequestsConfig {
        &self.config
    }

    /// The routing rules in use now.
    pub fn rules(&self) -> Arc<Rules> {
        self.routing.rules()
    }

    /// The workflow's clock, ms since the epoch.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    async fn publish(
        &self,
        envelope: Arc<Envelope>,
        key: Option<&str>,
    ) -> Result<Published, PublishError> {
        let publish = match key {
            Some(key) => Publish::with_key(envelope, key),
            None => Publish::new(envelope),
        };
        self.dispatcher.publish(publish).await
    }

    /// Opens a request with a `SERVICE_REQUEST` envelope that the gateway authorized (its
    /// `messageId` becomes the request id). To a room: routed to a department (the payload's
    /// `department` if it names a configured one, else the rules), stored there and in the room;
    /// to a department: stored there. The answer is the publish to the channel the envelope
    /// named (for a routed request, the room's copy; the `messageId` is the same on both).
    pub async fn open(
        &self,
        actor: &Actor,
        mut envelope: Envelope,
        idempotency_key: Option<String>,
    ) -> Result<Published, RequestError> {
        let mut rule = None;
        let to_room = matches!(envelope.channel, Channel::Room(_));
        let (department, room) = match &envelope.channel {
            Channel::Room(room) => {
                let named = field(&envelope.payload, "department")
                    .filter(|d| self.config.departments.iter().any(|k| k == d));
                let route = match named {
                    Some(d) => Route {
                        department: d.to_owned(),
                        rule: "named".into(),
                        matched: "the payload's department".into(),
                    },
                    None => self
                        .routing
                        .rules()
                        .route(&envelope.event, &envelope.payload),
                };
                let routing = json!({
                    "department": route.department,
                    "rule": route.rule,
                    "matched": route.matched,
                });
                envelope.payload = match std::mem::take(&mut envelope.payload) {
                    Value::Object(mut map) => {
                        map.insert("routing".into(), routing);
                        Value::Object(map)
                    }
                    Value::Null => json!({ "routing": routing }),
                    other => json!({ "text": other, "routing": routing }),
                };
                rule = Some(route.rule);
                (route.department, Some(room.clone()))
            }
            Channel::Dept(d) => {
                let room = field(&envelope.payload, "room")
                    .filter(|r| bellhop_protocol::is_valid_id(r))
                    .map(str::to_owned);
                (d.clone(), room)
            }
            other => {
                return Err(RequestError::BadRequest(format!(
                    "{SERVICE_REQUEST} goes to a room: or dept: channel, not {other}"
                )))
            }
        };
        if !self.config.departments.contains(&department) {
            return Err(RequestError::BadRequest(format!(
                "unknown department {department}"
            )));
        }
        envelope.channel = Channel::Dept(department.clone());
        let envelope = Arc::new(envelope);
        let published = self
            .publish(envelope.clone(), idempotency_key.as_deref())
            .await?;
        if published.duplicate {
            if let (true, Some(room)) = (to_room, room) {
                // The room's copy is a repeat too: its original ack.
                let mut copy = (*envelope).clone();
                copy.channel = Channel::Room(room);
                return Ok(self
                    .publish(Arc::new(copy), idempotency_key.as_deref())
                    .await?);
            }
            return Ok(published);
        }
        let now = self.now_ms();
        let request = ServiceRequest {
            id: envelope.message_id.clone(),
            property: envelope.namespace.clone(),
            department,
            room: room.clone(),
            priority: envelope.priority,
            status: Status::Open,
            opened_by: actor.id.clone(),
            opened_by_role: actor.role,
            assignee: None,
            rule,
            level: 1,
            opened_at_ms: now,
            updated_at_ms: now,
            acknowledged_at_ms: None,
            closed_at_ms: None,
            escalated_at_ms: None,
            message: envelope.clone(),
        };
        let due = self.config.escalation.next_due(&request);
        if self.store.insert(&request, due).await? {
            if let Some(o) = self.observer.get() {
                o.opened(&request);
            }
        }
        if let Some(room) = room {
            let mut copy = (*envelope).clone();
            copy.channel = Channel::Room(room);
            let in_room = self
                .publish(Arc::new(copy), idempotency_key.as_deref())
                .await?;
            if to_room {
                // The ack names the channel the publisher named.
                return Ok(in_room);
            }
        }
        Ok(published)
    }

    /// Applies a `STAFF_ASSIGNED` or `SERVICE_REQUEST_UPDATED` envelope that the gateway
    /// authorized for its channel, which must be the request's department or room channel. The
    /// message is stored on both. The answer is the named channel's publish.
    pub async fn update(
        &self,
        actor: &Actor,
        mut envelope: Envelope,
        idempotency_key: Option<String>,
    ) -> Result<Published, RequestError> {
        let payload = &envelope.payload;
        let id = field(payload, "requestId")
            .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID)
            .ok_or_else(|| {
                RequestError::BadRequest(format!(
                    "{} needs payload.requestId (a request's id, at most {MAX_REQUEST_ID} characters)",
                    envelope.event
                ))
            })?
            .to_owned();
        let action = match envelope.event.as_str() {
            STAFF_ASSIGNED => {
                let assignee = field(payload, "assignee")
                    .filter(|a| bellhop_protocol::is_valid_id(a))
                    .ok_or_else(|| {
                        RequestError::BadRequest(
                            "STAFF_ASSIGNED needs payload.assignee, a user id ([A-Za-z0-9_.-]{1,64})"
                                .into(),
                        )
                    })?;
                Action::Assign {
                    assignee: assignee.to_owned(),
                }
            }
            _ => {
                let status = field(payload, "status")
                    .and_then(Status::parse)
                    .filter(|s| *s != Status::Open)
                    .ok_or_else(|| {
                        RequestError::BadRequest(
                            "SERVICE_REQUEST_UPDATED needs payload.status: acknowledged, in_progress, resolved or cancelled"
                                .into(),
                        )
                    })?;
                Action::SetStatus(status)
            }
        };
        let property = envelope.namespace.clone();
        let mut attempts = 0;
        let (before, after) = loop {
            attempts += 1;
            let current = self
                .store
                .get(&property, &id)
                .await?
                .ok_or_else(|| RequestError::NotFound(id.clone()))?;
            let r = &current.request;
            let dept = Channel::Dept(r.department.clone());
            let room = r.room.clone().map(Channel::Room);
            if envelope.channel != dept && Some(&envelope.channel) != room.as_ref() {
                let also = room.map(|c| format!(" or {c}")).unwrap_or_default();
                return Err(RequestError::BadRequest(format!(
                    "{} of request {id} goes to its channel {dept}{also}, not {}",
                    envelope.event, envelope.channel
                )));
            }
            state::authorize(actor, r, &action)?;
            let next = state::apply(r, &action, self.now_ms())?;
            let due = self.config.escalation.next_due(&next);
            if self.store.replace(&current, &next, due).await? {
                break (current.request, next);
            }
            if attempts >= UPDATE_ATTEMPTS {
                return Err(BrokerError::Unavailable {
                    reason: format!("request {id} kept changing while this update was applied"),
                    retry_after: Duration::from_millis(100),
                }
                .into());
            }
        };
        if before.status == Status::Open && after.status != Status::Open {
            if let Some(o) = self.observer.get() {
                let after_ms = after.updated_at_ms.saturating_sub(after.opened_at_ms);
                o.answered(&after, Duration::from_millis(after_ms));
            }
        }
        if envelope.correlation_id.is_none() {
            envelope.correlation_id = Some(id.clone());
        }
        let named = envelope.channel.clone();
        let envelope = Arc::new(envelope);
        let published = self
            .publish(envelope.clone(), idempotency_key.as_deref())
            .await?;
        let other = match &named {
            Channel::Dept(_) => after.room.clone().map(Channel::Room),
            _ => Some(Channel::Dept(after.department.clone())),
        };
        if let Some(channel) = other.filter(|_| !published.duplicate) {
            let mut copy = (*envelope).clone();
            copy.channel = channel;
            self.publish(Arc::new(copy), idempotency_key.as_deref())
                .await?;
        }
        Ok(published)
    }

    /// The request `id` of `property`.
    pub async fn get(
        &self,
        property: &str,
        id: &str,
    ) -> Result<Option<ServiceRequest>, BrokerError> {
        if id.is_empty() || id.len() > MAX_REQUEST_ID {
            return Ok(None);
        }
        Ok(self.store.get(property, id).await?.map(|v| v.request))
    }

    /// Requests of `property` passing `filter`, newest first.
    pub async fn list(
        &self,
        property: &str,
        filter: &Filter,
    ) -> Result<Vec<ServiceRequest>, BrokerError> {
        self.store.list(property, filter).await
    }

    /// Fires every escalation due now (in batches), returning how many were published. A
    /// failure leaves the rest to the next pass (their claims lapse after the lease).
    pub async fn escalate_due(&self) -> Result<usize, BrokerError> {
        let mut fired = 0;
        loop {
            let now = self.now_ms();
            let claims = self
                .store
                .claim_due(now, self.config.lease, CLAIM_BATCH)
                .await?;
            let n = claims.len();
            for claim in claims {
                if self.fire(claim).await {
                    fired += 1;
                }
            }
            if n < CLAIM_BATCH {
                return Ok(fired);
            }
        }
    }

    /// Publishes one claimed escalation and confirms it; true when it was published (or had
    /// been, by a node that died before confirming).
    async fn fire(&self, claim: Claim) -> bool {
        let c = &self.config.escalation;
        let r = &claim.request;
        let now = self.now_ms();
        if claim.level > c.max_level || r.priority < c.min_priority || r.status != Status::Open {
            let _ = self.store.confirm(&claim, now, None).await;
            return false;
        }
        let payload = json!({
            "requestId": r.id,
            "level": claim.level,
            "department": r.department,
            "request": r.message,
        });
        let mut targets = vec![Channel::Dept(r.department.clone())];
        if c.to_management(claim.level) && !targets.contains(&c.management_channel) {
            targets.push(c.management_channel.clone());
        }
        let key = format!("escalation:{}:{}", r.id, claim.level);
        let message_id = uuid::Uuid::new_v4().to_string();
        for channel in targets {
            let envelope = Envelope {
                message_id: message_id.clone(),
                event: ESCALATION.into(),
                namespace: r.property.clone(),
                channel,
                payload: payload.clone(),
                timestamp: rfc3339(now),
                sender: Sender {
                    id: ESCALATION_SENDER.into(),
                    role: Role::Service,
                },
                priority: Priority::Urgent,
                correlation_id: Some(r.id.clone()),
            };
            if let Err(error) = self.publish(Arc::new(envelope), Some(&key)).await {
                tracing::warn!(request = %r.id, level = claim.level, %error,
                    "could not publish an escalation; it is retried when its claim lapses");
                return false;
            }
        }
        let mut escalated = r.clone();
        escalated.level = claim.level;
        escalated.escalated_at_ms = Some(now);
        let next = c.next_due(&escalated);
        if let Err(error) = self.store.confirm(&claim, now, next).await {
            tracing::warn!(request = %r.id, level = claim.level, %error,
                "could not confirm an escalation; a repeat is caught by its idempotency key");
        }
        tracing::info!(request = %r.id, level = claim.level, department = %r.department, "request escalated");
        if let Some(o) = self.observer.get() {
            o.escalated(&escalated, claim.level);
        }
        true
    }
}

/// Fires due escalations every `tick` for as long as the workflow exists.
async fn escalate_forever(requests: std::sync::Weak<Requests>, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(requests) = requests.upgrade() else {
            return;
        };
        if let Err(error) = requests.escalate_due().await {
            tracing::debug!(%error, "could not look for due escalations");
        }
    }
}
