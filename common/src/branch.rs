//! Facts about one branch, as operators write them and as they travel.
//!
//! The same shape is the node's `[branch]` configuration section, the body of
//! the controller's `PUT /api/v1/nodes/{id}/branch`, an EdgeNode resource's
//! `spec.branch`, and the `set_branch` command. Values stay text here: the
//! dialog crate (`edgedesk_dialog::branch`) checks them and says what is wrong.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The facts a branch may state. Each is answered by an intent of its own.
pub const FACT_NAMES: &[&str] = &[
    "address",
    "directions",
    "services",
    "atms",
    "queue",
    "documents",
];

/// One branch's opening hours, holidays and facts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchInfo {
    /// Weekday (`mon` … `sun`) → `"09:00-17:00"` or `"closed"`. Empty: the
    /// node's `dialog.opening_hour`, `closing_hour` and `open_days` apply.
    /// Otherwise a day not named is closed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hours: BTreeMap<String, String>,
    /// Days that differ from the week: closed, or other hours.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holidays: Vec<Holiday>,
    /// Fact name (see [`FACT_NAMES`]) → its text in each language.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, Text>,
}

/// A day with hours of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holiday {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// `"closed"` (the default) or `"HH:MM-HH:MM"`.
    #[serde(default = "closed")]
    pub hours: String,
    /// What the day is called, shown to visitors.
    #[serde(default)]
    pub name: Text,
}

fn closed() -> String {
    "closed".to_owned()
}

/// A text in English and Chinese; either may be empty (the other is used).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Text {
    #[serde(default)]
    pub en: String,
    #[serde(default)]
    pub zh: String,
}

impl BranchInfo {
    /// Nothing set: the node's own settings apply.
    pub fn is_empty(&self) -> bool {
        self.hours.is_empty() && self.holidays.is_empty() && self.facts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_fields() {
        let json = r#"{"hours":{"mon":"09:00-17:00","sun":"closed"},
            "holidays":[{"date":"2026-12-25","name":{"en":"Christmas Day"}}],
            "facts":{"address":{"en":"1 Main St","zh":"主街1号"}}}"#;
        let b: BranchInfo = serde_json::from_str(json).unwrap();
        assert_eq!(b.holidays[0].hours, "closed");
        assert_eq!(b.facts["address"].zh, "主街1号");
        let back: BranchInfo = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        assert_eq!(back, b);
        let e = serde_json::from_str::<BranchInfo>(r#"{"adress":{}}"#).unwrap_err();
        assert!(e.to_string().contains("adress"), "{e}");
        assert!(BranchInfo::default().is_empty());
    }
}
