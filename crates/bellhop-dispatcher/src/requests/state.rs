//! The service request state machine: pure functions over a [`ServiceRequest`], taking `now`
//! (milliseconds since the epoch) as an argument. No IO, no clock, no locks: both stores and the
//! gateway rely on these rules being the same everywhere.

use std::fmt;
use std::sync::Arc;

use bellhop_protocol::{Envelope, Priority, Role};
use serde::{Deserialize, Serialize};

/// Where a request is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Opened, nobody has answered yet: the only status that escalates.
    Open,
    /// Someone saw it (or was assigned).
    Acknowledged,
    /// Being worked on.
    InProgress,
    /// Done (terminal).
    Resolved,
    /// Withdrawn by the guest or staff (terminal).
    Cancelled,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 5] = [
        Status::Open,
        Status::Acknowledged,
        Status::InProgress,
        Status::Resolved,
        Status::Cancelled,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Acknowledged => "acknowledged",
            Status::InProgress => "in_progress",
            Status::Resolved => "resolved",
            Status::Cancelled => "cancelled",
        }
    }

    /// Parses a wire name.
    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// No transition leaves it.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Resolved | Status::Cancelled)
    }

    /// Lifecycle rank: a request only moves forward (cancel excepted).
    fn rank(self) -> u8 {
        match self {
            Status::Open => 0,
            Status::Acknowledged => 1,
            Status::InProgress => 2,
            Status::Resolved | Status::Cancelled => 3,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who did something to a request, as the token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The user id.
    pub id: String,
    /// The role.
    pub role: Role,
    /// Departments (staff).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depts: Vec<String>,
    /// Rooms (guests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
}

/// One service request, as stored per property.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRequest {
    /// The `messageId` of the `SERVICE_REQUEST` that opened it.
    pub id: String,
    /// The property.
    pub property: String,
    /// The department that answers it (a configured one).
    pub department: String,
    /// The guest's room, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// The priority of the opening message.
    pub priority: Priority,
    /// Where it is in its life.
    pub status: Status,
    /// Who opened it (user id).
    pub opened_by: String,
    /// The opener's role.
    pub opened_by_role: Role,
    /// Who is assigned (`STAFF_ASSIGNED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    /// The routing rule that chose the department, for a routed request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Escalation level: 1 when opened, one more per `ESCALATION`.
    pub level: u32,
    /// When it was opened (ms since the epoch).
    pub opened_at_ms: u64,
    /// When it last changed.
    pub updated_at_ms: u64,
    /// When it first left `open` (acknowledged, assigned, worked on, resolved or cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at_ms: Option<u64>,
    /// When it was resolved or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at_ms: Option<u64>,
    /// When it last escalated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalated_at_ms: Option<u64>,
    /// The message that opened it (what an `ESCALATION` carries as `request`).
    pub message: Arc<Envelope>,
}

/// What a message asks to do to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `STAFF_ASSIGNED` {`requestId`, `assignee`}.
    Assign {
        /// The staff member's user id.
        assignee: String,
    },
    /// `SERVICE_REQUEST_UPDATED` {`requestId`, `status`}.
    SetStatus(Status),
}

/// Why an action was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The actor may not change this request.
    #[error("{0}")]
    Forbidden(String),
    /// The request cannot go there from where it is.
    #[error("{0}")]
    InvalidTransition(String),
}

/// Whether `actor` may apply `action` to `request`: staff of its department, managers, admins
/// and services for anything; the guest who opened it only to cancel it.
pub fn authorize(actor: &Actor, request: &ServiceRequest, action: &Action) -> Result<(), Refusal> {
    match actor.role {
        Role::Manager | Role::Admin | Role::Service => Ok(()),
        Role::Staff if actor.depts.contains(&request.department) => Ok(()),
        Role::Staff => Err(Refusal::Forbidden(format!(
            "request {} belongs to dept:{}, not to your departments",
            request.id, request.department
        ))),
        Role::Guest => {
            if actor.id != request.opened_by {
                return Err(Refusal::Forbidden(format!(
                    "request {} was opened by someone else",
                    request.id
                )));
            }
            if *action != Action::SetStatus(Status::Cancelled) {
                return Err(Refusal::Forbidden(
                    "a guest may only cancel its own request (status cancelled)".into(),
                ));
            }
            Ok(())
        }
    }
}

/// Applies `action` to `request` at `now`: the new request, or why not. Allowed moves: forward
/// along open, acknowledged, in_progress, resolved (steps may be skipped), and to cancelled from
/// any status that is not terminal. Assigning someone acknowledges an open request and may
/// reassign one that is acknowledged or in progress.
pub fn apply(
    request: &ServiceRequest,
    action: &Action,
    now: u64,
) -> Result<ServiceRequest, Refusal> {
    if request.status.is_terminal() {
        return Err(Refusal::InvalidTransition(format!(
            "request {} is already {}: it cannot change any more",
            request.id, request.status
        )));
    }
    let mut next = request.clone();
    match action {
        Action::Assign { assignee } => {
            next.assignee = Some(assignee.clone());
            if next.status == Status::Open {
                next.status = Status::Acknowledged;
            }
        }
        Action::SetStatus(Status::Open) => {
            return Err(Refusal::InvalidTransition(format!(
                "request {} cannot go back to open (it is {})",
                request.id, request.status
            )))
        }
        Action::SetStatus(to) => {
            let forward = to.rank() > request.status.rank();
            if !forward && *to != Status::Cancelled {
                return Err(Refusal::InvalidTransition(format!(
                    "request {} is {}: it cannot become {to}",
                    request.id, request.status
                )));
            }
            next.status = *to;
        }
    }
    next.updated_at_ms = now;
    if request.status == Status::Open && next.status != Status::Open {
        next.acknowledged_at_ms = Some(now);
    }
    if next.status.is_terminal() {
        next.closed_at_ms = Some(now);
    }
    Ok(next)
}

/// When escalation happens, and where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EscalationConfig {
    /// Requests at or above it escalate (`ESCALATION_MIN_PRIORITY`, `high`).
    pub min_priority: Priority,
    /// Unanswered this long after opening or the last escalation, a request escalates
    /// (`ESCALATION_AFTER_SECONDS`, 300 s), in milliseconds.
    pub after_ms: u64,
    /// From this level on, escalations also go to `management_channel`
    /// (`ESCALATION_MANAGEMENT_LEVEL`, 4).
    pub management_level: u32,
    /// Where management hears of escalations (`ESCALATION_MANAGEMENT_CHANNEL`,
    /// `dept:management`).
    pub management_channel: bellhop_protocol::Channel,
    /// The last level (`ESCALATION_MAX_LEVEL`, 5).
    pub max_level: u32,
}

impl Default for EscalationConfig {
    fn default() -> Self {
        EscalationConfig {
            min_priority: Priority::High,
            after_ms: 300_000,
            management_level: 4,
            management_channel: bellhop_protocol::Channel::Dept("management".into()),
            max_level: 5,
        }
    }
}

impl EscalationConfig {
    /// Rejects settings that cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.after_ms == 0 || self.after_ms > 7 * 24 * 3_600_000 {
            return Err("ESCALATION_AFTER_SECONDS must be between 1 and 604800".into());
        }
        if !(2..=20).contains(&self.max_level) {
            return Err("ESCALATION_MAX_LEVEL must be between 2 and 20".into());
        }
        if self.management_level < 2 || self.management_level > self.max_level + 1 {
            return Err(format!(
                "ESCALATION_MANAGEMENT_LEVEL must be between 2 and ESCALATION_MAX_LEVEL + 1 ({})",
                self.max_level + 1
            ));
        }
        if !matches!(
            self.management_channel,
            bellhop_protocol::Channel::Dept(_) | bellhop_protocol::Channel::User(_)
        ) {
            return Err("ESCALATION_MANAGEMENT_CHANNEL must be a dept: or user: channel".into());
        }
        Ok(())
    }

    /// When a request escalates next, or `None` when it never will (answered, below the
    /// minimum priority, or at the last level).
    pub fn next_due(&self, request: &ServiceRequest) -> Option<u64> {
        if request.status != Status::Open
            || request.priority < self.min_priority
            || request.level >= self.max_level
        {
            return None;
        }
        let since = request.escalated_at_ms.unwrap_or(request.opened_at_ms);
        Some(since.saturating_add(self.after_ms))
    }

    /// Whether an escalation to `level` also goes to the management channel.
    pub fn to_management(&self, level: u32) -> bool {
        level >= self.management_level
    }
}

#[cfg(test)]
mod tests {
    use bellhop_protocol::{Channel, Sender};

    use super::*;

    fn request(priority: Priority) -> ServiceRequest {
        let message = Envelope {
            message_id: "r1".into(),
            event: "SERVICE_REQUEST".into(),
            namespace: "h1".into(),
            channel: Channel::Dept("maintenance".into()),
            payload: serde_json::json!({"text": "the sink is leaking"}),
            timestamp: "2026-11-23T09:30:00.000Z".into(),
            sender: Sender {
                id: "g1".into(),
                role: Role::Guest,
            },
            priority,
            correlation_id: None,
        };
        ServiceRequest {
            id: "r1".into(),
            property: "h1".into(),
            department: "maintenance".into(),
            room: Some("101".into()),
            priority,
            status: Status::Open,
            opened_by: "g1".into(),
            opened_by_role: Role::Guest,
            assignee: None,
            rule: None,
            level: 1,
            opened_at_ms: 1_000,
            updated_at_ms: 1_000,
            acknowledged_at_ms: None,
            closed_at_ms: None,
            escalated_at_ms: None,
            message: Arc::new(message),
        }
    }

    fn actor(role: Role, id: &str, depts: &[&str]) -> Actor {
        Actor {
            id: id.into(),
            role,
            depts: depts.iter().map(|d| d.to_string()).collect(),
            rooms: Vec::new(),
        }
    }

    #[test]
    fn a_request_moves_forward_and_records_when_it_was_answered_and_closed() {
        let r = request(Priority::High);
        let ack = apply(&r, &Action::SetStatus(Status::Acknowledged), 2_000).unwrap();
        assert_eq!(ack.status, Status::Acknowledged);
        assert_eq!(ack.acknowledged_at_ms, Some(2_000));
        let working = apply(&ack, &Action::SetStatus(Status::InProgress), 3_000).unwrap();
        assert_eq!(working.acknowledged_at_ms, Some(2_000), "first answer kept");
        let done = apply(&working, &Action::SetStatus(Status::Resolved), 4_000).unwrap();
        assert_eq!(done.status, Status::Resolved);
        assert_eq!(done.closed_at_ms, Some(4_000));
        assert_eq!(done.updated_at_ms, 4_000);
        // Steps may be skipped.
        let direct = apply(&r, &Action::SetStatus(Status::Resolved), 5_000).unwrap();
        assert_eq!(direct.acknowledged_at_ms, Some(5_000));
    }

    #[test]
    fn backwards_repeated_and_terminal_moves_are_refused_with_the_reason() {
        let r = request(Priority::High);
        let working = apply(&r, &Action::SetStatus(Status::InProgress), 2).unwrap();
        for to in [Status::Acknowledged, Status::InProgress, Status::Open] {
            let e = apply(&working, &Action::SetStatus(to), 3).unwrap_err();
            assert!(matches!(e, Refusal::InvalidTransition(_)), "{to}: {e:?}");
        }
        let e = apply(&r, &Action::SetStatus(Status::Open), 3).unwrap_err();
        assert!(e.to_string().contains("cannot go back to open"), "{e}");
        let cancelled = apply(&working, &Action::SetStatus(Status::Cancelled), 4).unwrap();
        for action in [
            Action::SetStatus(Status::Resolved),
            Action::SetStatus(Status::Cancelled),
            Action::Assign {
                assignee: "s1".into(),
            },
        ] {
            let e = apply(&cancelled, &action, 5).unwrap_err();
            assert!(e.to_string().contains("already cancelled"), "{e}");
        }
    }

    #[test]
    fn assigning_acknowledges_an_open_request_and_may_reassign() {
        let r = request(Priority::Urgent);
        let a = apply(
            &r,
            &Action::Assign {
                assignee: "s1".into(),
            },
            7,
        )
        .unwrap();
        assert_eq!(
            (a.status, a.assignee.as_deref()),
            (Status::Acknowledged, Some("s1"))
        );
        assert_eq!(a.acknowledged_at_ms, Some(7));
        let w = apply(&a, &Action::SetStatus(Status::InProgress), 8).unwrap();
        let b = apply(
            &w,
            &Action::Assign {
                assignee: "s2".into(),
            },
            9,
        )
        .unwrap();
        assert_eq!(
            (b.status, b.assignee.as_deref()),
            (Status::InProgress, Some("s2"))
        );
    }

    #[test]
    fn only_the_department_managers_and_the_opening_guest_cancelling_may_act() {
        let r = request(Priority::High);
        let ack = Action::SetStatus(Status::Acknowledged);
        let cancel = Action::SetStatus(Status::Cancelled);
        assert!(authorize(&actor(Role::Staff, "s1", &["maintenance"]), &r, &ack).is_ok());
        let e = authorize(&actor(Role::Staff, "s2", &["housekeeping"]), &r, &ack).unwrap_err();
        assert!(e.to_string().contains("dept:maintenance"), "{e}");
        for role in [Role::Manager, Role::Admin, Role::Service] {
            assert!(authorize(&actor(role, "m", &[]), &r, &ack).is_ok());
        }
        assert!(authorize(&actor(Role::Guest, "g1", &[]), &r, &cancel).is_ok());
        assert!(matches!(
            authorize(&actor(Role::Guest, "g1", &[]), &r, &ack),
            Err(Refusal::Forbidden(_))
        ));
        assert!(matches!(
            authorize(&actor(Role::Guest, "g2", &[]), &r, &cancel),
            Err(Refusal::Forbidden(_))
        ));
    }

    #[test]
    fn escalation_is_due_only_for_open_requests_at_or_above_the_minimum_below_the_last_level() {
        let c = EscalationConfig::default();
        let mut r = request(Priority::High);
        assert_eq!(c.next_due(&r), Some(1_000 + 300_000));
        r.escalated_at_ms = Some(400_000);
        r.level = 2;
        assert_eq!(
            c.next_due(&r),
            Some(700_000),
            "counted from the last escalation"
        );
        r.level = 5;
        assert_eq!(c.next_due(&r), None, "level 5 is the last");
        assert_eq!(c.next_due(&request(Priority::Normal)), None);
        let ack = apply(
            &request(Priority::Urgent),
            &Action::SetStatus(Status::Acknowledged),
            2,
        )
        .unwrap();
        assert_eq!(c.next_due(&ack), None);
        assert!(!c.to_management(3) && c.to_management(4) && c.to_management(5));
        assert!(c.validate().is_ok());
        let bad = EscalationConfig {
            max_level: 1,
            ..EscalationConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("ESCALATION_MAX_LEVEL"));
    }

    #[test]
    fn statuses_round_trip_their_wire_names() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(Status::parse("done"), None);
    }
}
