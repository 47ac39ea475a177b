//! What the lake last published of each finding of a chain, to tell a new version's changes:
//! `_state/alerts/history/<account>/<region>.json`, a checkpoint committed with the chain's
//! data. Entries older than GuardDuty's 90-day retention are dropped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::rules::label;
use super::{Candidate, Trigger};
use crate::normalize::guardduty::FindingVersion;
use crate::sink::store::Tag;
use crate::state::journal::Checkpoint;

pub const DIR: &str = "_state/alerts/history/";
/// GuardDuty keeps a finding 90 days after its last update.
const RETENTION_MS: i64 = 90 * 86_400_000;

pub fn key(account_id: &str, region: &str) -> String {
    format!("{DIR}{account_id}/{region}.json")
}

/// A finding's last published version, compactly (a history holds every finding of 90 days).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seen {
    #[serde(rename = "u")]
    pub updated_ms: i64,
    #[serde(rename = "s")]
    pub severity: f64,
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    #[serde(rename = "a", default, skip_serializing_if = "std::ops::Not::not")]
    pub archived: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    pub findings: BTreeMap<String, Seen>,
}

impl History {
    /// A history read back from `_state/` is untrusted: every entry must be a plausible one.
    pub fn check(&self) -> Result<(), String> {
        for (id, seen) in &self.findings {
            if id.is_empty() || id.len() > 512 {
                return Err(format!("finding id of {} bytes", id.len()));
            }
            if !(seen.severity.is_finite() && (0.0..=10.0).contains(&seen.severity)) {
                return Err(format!("severity {} of {id}", seen.severity));
            }
        }
        Ok(())
    }
}

/// A chain's history while it is read, and the candidates it found.
pub struct Tracker {
    history: History,
    tag: Option<Tag>,
    /// A finding the history does not know is new when created at or after this (epoch ms);
    /// None on a target's first run, which builds the history and alerts nothing as new.
    new_from_ms: Option<i64>,
    changed: bool,
    pub candidates: Vec<Candidate>,
}

impl Tracker {
    /// `new_from_ms`: the window start when the history existed, else the previous run's end
    /// (findings created since the last run are new), else None (a first run).
    pub fn new(history: History, tag: Option<Tag>, new_from_ms: Option<i64>) -> Self {
        Tracker {
            history,
            tag,
            new_from_ms,
            changed: false,
            candidates: Vec::new(),
        }
    }

    /// A new version about to be published: what it changed, then remembered.
    pub fn observe(&mut self, row: &FindingVersion) {
        let previous = self.history.findings.get(&row.id).copied();
        if previous.is_some_and(|p| p.updated_ms >= row.updated_at_ms) {
            return; // an older version than the one remembered: nothing changed since
        }
        let triggers = triggers(row, previous.as_ref(), self.new_from_ms);
        if !triggers.is_empty() {
            self.candidates
                .push(Candidate::of(row, previous.as_ref(), triggers));
        }
        self.history.findings.insert(
            row.id.clone(),
            Seen {
                updated_ms: row.updated_at_ms,
                severity: row.severity,
                count: row.count,
                archived: row.archived.unwrap_or(false),
            },
        );
        self.changed = true;
    }

    /// The history's checkpoint (when a version was published) and the candidates.
    pub fn finish(mut self, key: String, now_ms: i64) -> (Option<Checkpoint>, Vec<Candidate>) {
        if !self.changed {
            return (None, self.candidates);
        }
        self.history
            .findings
            .retain(|_, seen| seen.updated_ms >= now_ms - RETENTION_MS);
        let checkpoint = serde_json::to_string(&self.history)
            .ok()
            .map(|body| Checkpoint {
                key,
                body,
                expected: self.tag,
            });
        (checkpoint, self.candidates)
    }
}

/// The changes of `row` since `previous` (none: a finding the history does not know).
fn triggers(
    row: &FindingVersion,
    previous: Option<&Seen>,
    new_from_ms: Option<i64>,
) -> Vec<Trigger> {
    let archived = row.archived.unwrap_or(false);
    let Some(previous) = previous else {
        let new = new_from_ms.is_some_and(|from| row.created_at_ms >= from);
        return if new { vec![Trigger::New] } else { Vec::new() };
    };
    let mut triggers = Vec::new();
    if rank(label(row.severity)) > rank(label(previous.severity)) {
        triggers.push(Trigger::SeverityRaised);
    }
    if let (Some(now), Some(before)) = (row.count, previous.count) {
        if now > before {
            triggers.push(Trigger::CountSpike);
        }
    }
    if previous.archived && !archived {
        triggers.push(Trigger::Reopened);
    }
    if !previous.archived && archived {
        triggers.push(Trigger::Archived);
    }
    triggers
}

fn rank(label: &str) -> u8 {
    match label {
        "CRITICAL" => 3,
        "HIGH" => 2,
        "MEDIUM" => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(
        id: &str,
        updated_ms: i64,
        severity: f64,
        count: i64,
        archived: bool,
    ) -> FindingVersion {
        FindingVersion {
            id: id.into(),
            account_id: "123456789012".into(),
            region: "us-east-1".into(),
            finding_type: "Recon:EC2/PortProbeUnprotectedPort".into(),
            updated_at_ms: updated_ms,
            created_at_ms: 1_000,
            severity,
            count: Some(count),
            archived: Some(archived),
            ..FindingVersion::default()
        }
    }

    #[test]
    fn each_change_is_a_candidate_once() {
        let hour = 3_600_000;
        let mut tracker = Tracker::new(History::default(), None, Some(0));
        tracker.observe(&version("a", hour, 5.0, 1, false));
        tracker.observe(&version("a", 2 * hour, 7.5, 1, false)); // Medium → High
        tracker.observe(&version("a", 3 * hour, 7.5, 41, false)); // +40 in an hour
        tracker.observe(&version("a", 3 * hour, 7.5, 41, false)); // the same version again
        tracker.observe(&version("a", 4 * hour, 7.5, 41, true)); // archived
        tracker.observe(&version("a", 5 * hour, 7.5, 41, false)); // reopened
        tracker.observe(&version("a", 6 * hour, 7.2, 41, false)); // nothing changed that matters
        let triggers: Vec<Vec<Trigger>> = tracker
            .candidates
            .iter()
            .map(|c| c.triggers.clone())
            .collect();
        assert_eq!(
            triggers,
            vec![
                vec![Trigger::New],
                vec![Trigger::SeverityRaised],
                vec![Trigger::CountSpike],
                vec![Trigger::Archived],
                vec![Trigger::Reopened],
            ]
        );
        assert_eq!(tracker.candidates[2].count_per_hour, Some(40.0));
        let (checkpoint, _) = tracker.finish(key("123456789012", "us-east-1"), 6 * hour);
        let history: History = serde_json::from_str(&checkpoint.unwrap().body).unwrap();
        assert_eq!(history.findings["a"].updated_ms, 6 * hour);
    }

    #[test]
    fn a_first_run_alerts_nothing_as_new_and_old_entries_expire() {
        let mut tracker = Tracker::new(History::default(), None, None);
        tracker.observe(&version("a", 5_000, 9.0, 1, false));
        assert!(tracker.candidates.is_empty());
        let (checkpoint, _) = tracker.finish("k".into(), 5_000 + RETENTION_MS + 1);
        let history: History = serde_json::from_str(&checkpoint.unwrap().body).unwrap();
        assert!(history.findings.is_empty());
    }
}
