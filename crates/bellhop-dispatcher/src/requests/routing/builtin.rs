//! The routing rules a hotel expects without a rule file ([`Rules::builtin`]): keywords and
//! phrases per department, kept for the departments that are configured. Data only.

use super::{Rule, Rules};

/// A built-in rule: name, department, priority, keywords, phrases.
type Builtin = (
    &'static str,
    &'static str,
    i32,
    &'static [&'static str],
    &'static [&'static str],
);

/// The rules a hotel expects without a file, for the departments that are configured.
const BUILTIN: &[Builtin] = &[
    (
        "maintenance",
        "maintenance",
        40,
        &[
            "leak",
            "broken",
            "light",
            "lamp",
            "bulb",
            "heating",
            "heater",
            "clog",
            "flood",
            "drip",
            "repair",
            "aircon",
            "thermostat",
        ],
        &[
            "air conditioning",
            "air conditioner",
            "hot water",
            "not working",
        ],
    ),
    (
        "housekeeping",
        "housekeeping",
        30,
        &[
            "towel",
            "linen",
            "sheet",
            "pillow",
            "blanket",
            "clean",
            "tidy",
            "toiletries",
            "soap",
            "shampoo",
        ],
        &["toilet paper", "make up the room"],
    ),
    (
        "roomservice",
        "roomservice",
        20,
        &[
            "food",
            "breakfast",
            "menu",
            "lunch",
            "dinner",
            "meal",
            "hungry",
            "coffee",
            "drink",
        ],
        &["room service"],
    ),
    (
        "frontdesk",
        "frontdesk",
        10,
        &[
            "taxi",
            "checkout",
            "bill",
            "invoice",
            "key",
            "reservation",
            "receipt",
        ],
        &["check out", "late check"],
    ),
];

impl Rules {
    /// The built-in rules, keeping those whose department is configured; the default is
    /// `frontdesk` when configured, else the first department.
    pub fn builtin(departments: &[String]) -> Rules {
        let known = |d: &str| departments.iter().any(|k| k == d);
        let rules = BUILTIN
            .iter()
            .filter(|(_, dept, ..)| known(dept))
            .map(|(name, dept, priority, keywords, phrases)| Rule {
                name: (*name).to_owned(),
                department: (*dept).to_owned(),
                keywords: keywords.iter().map(|k| (*k).to_owned()).collect(),
                phrases: phrases.iter().map(|p| (*p).to_owned()).collect(),
                regexes: Vec::new(),
                events: Vec::new(),
                priority: *priority,
            })
            .collect();
        let fallback = if known("frontdesk") {
            "frontdesk".to_owned()
        } else {
            departments.first().cloned().unwrap_or_default()
        };
        Rules { rules, fallback }
    }
}
