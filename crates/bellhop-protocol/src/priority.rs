//! Message priorities and the default priority of each known event.

use serde::{Deserialize, Serialize};

/// How urgently a message must be delivered. Ordered: `Low < Normal < High < Urgent`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Background information; first to wait under load.
    Low,
    /// Ordinary operations traffic (service requests, chat).
    #[default]
    Normal,
    /// Status changes that staff act on (room status, check-in/out, system alerts).
    High,
    /// Life and safety (`EMERGENCY_ALERT`): always first.
    Urgent,
}

impl Priority {
    /// All priorities, most urgent first.
    pub const ALL: [Priority; 4] = [
        Priority::Urgent,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    /// The lowercase wire name, also used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }

    /// Index in [`Priority::ALL`] order reversed: `Low = 0 .. Urgent = 3`.
    pub fn rank(self) -> usize {
        self as usize
    }

    /// The default priority of an event: the known events of the original service, `Normal` for
    /// any other.
    pub fn default_for_event(event: &str) -> Priority {
        match event {
            "EMERGENCY_ALERT" => Priority::Urgent,
            "ROOM_STATUS_UPDATE" | "GUEST_CHECKIN" | "GUEST_CHECKOUT" | "SYSTEM_ALERT" => {
                Priority::High
            }
            _ => Priority::Normal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_events_have_their_default_priorities() {
        assert_eq!(
            Priority::default_for_event("EMERGENCY_ALERT"),
            Priority::Urgent
        );
        assert_eq!(Priority::default_for_event("GUEST_CHECKIN"), Priority::High);
        assert_eq!(
            Priority::default_for_event("SERVICE_REQUEST"),
            Priority::Normal
        );
        assert_eq!(
            Priority::default_for_event("SOMETHING_NEW"),
            Priority::Normal
        );
        assert!(Priority::Urgent > Priority::High && Priority::Normal > Priority::Low);
    }
}
