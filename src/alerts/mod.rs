//! Alerts: after a commit, one EventBridge event per finding version that matters, with its
//! context, plus the coverage gaps new since the last run and one digest per run.
//!
//! 1. While a chain is read, [`history::Tracker`] compares each new version with the last
//!    one the lake has of that finding (`_state/alerts/history/<account>/<region>.json`) and
//!    keeps a [`Candidate`] for each change (new, severity raised, count spike, reopened,
//!    archived). The history is a checkpoint of the chain, committed with its data.
//! 2. Before the commit, [`outbox::stage`] applies the rules and writes the run's outbox
//!    (`_state/alerts/outbox/<run_id>.json`: every candidate and the events to send) through
//!    the same journal as the data: published data and its alerts are committed together.
//! 3. After the commit, [`emit::deliver`] sends every outbox's pending events (PutEvents, 10 a
//!    call, under 256 KB) and records what was sent. A crash in between leaves the outbox
//!    pending: the next run sends it, with the same dedup keys (at least once, never lost).

pub mod emit;
pub mod history;
pub mod outbox;
pub mod rules;

use serde::{Deserialize, Serialize};

pub use rules::{AlertRule, AlertRules, Rule, Trigger};

use crate::normalize::guardduty::FindingVersion;

/// The event `source` of every alert.
pub const SOURCE: &str = "guardlake";
pub const FINDING_ALERT: &str = "guardlake Finding Alert";
pub const COVERAGE_GAP: &str = "guardlake Coverage Gap";
pub const RUN_DIGEST: &str = "guardlake Run Digest";

/// Alerting as configured: where events go (none: staged for `guardlake alerts --dry-run`
/// only) and the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertConfig {
    pub bus: Option<String>,
    pub rules: Vec<Rule>,
}

/// What a delivery did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Delivery {
    /// Events owed at its start (all outboxes).
    pub due: u64,
    pub sent: u64,
    /// Marked failed for good in this delivery.
    pub failed: u64,
    /// Left pending for the next run.
    pub pending: u64,
    /// The first error: (code, message).
    pub error: Option<(String, String)>,
}

/// What a finding alert says of the resource a finding is about.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_bucket_names: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eks_cluster_name: Option<String>,
}

/// A new finding version that changed something, and what it changed. Rules decide which
/// candidates become alerts; the outbox keeps them all, so `guardlake alerts --dry-run` can
/// try other rules on the last run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub finding_id: String,
    pub account_id: String,
    #[serde(default)]
    pub account_name: Option<String>,
    #[serde(default)]
    pub ou_path: Option<String>,
    pub region: String,
    #[serde(default)]
    pub partition: Option<String>,
    pub finding_type: String,
    pub severity: f64,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub resource: Resource,
    #[serde(default)]
    pub remote_ip: Option<String>,
    #[serde(default)]
    pub remote_port: Option<i32>,
    #[serde(default)]
    pub remote_country: Option<String>,
    #[serde(default)]
    pub remote_org: Option<String>,
    #[serde(default)]
    pub local_port: Option<i32>,
    #[serde(default)]
    pub api: Option<String>,
    #[serde(default)]
    pub count: Option<i64>,
    /// Growth of `count` since the previous version, and per hour between the two versions.
    #[serde(default)]
    pub count_growth: Option<i64>,
    #[serde(default)]
    pub count_per_hour: Option<f64>,
    #[serde(default)]
    pub previous_severity: Option<f64>,
    #[serde(default)]
    pub previous_updated_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    #[serde(default)]
    pub first_seen_ms: Option<i64>,
    #[serde(default)]
    pub last_seen_ms: Option<i64>,
    pub archived: bool,
    pub sample: bool,
    pub triggers: Vec<Trigger>,
    /// CloudTrail events linked to this version (at most [`LINKED_PER_ALERT`]).
    #[serde(default)]
    pub linked_events: Vec<LinkedEvent>,
}

/// Linked CloudTrail events an alert carries, best reasons first.
pub const LINKED_PER_ALERT: usize = 5;

/// A CloudTrail event linked to a finding version (a `finding_events` row, with the event's
/// name and time).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LinkedEvent {
    pub finding_id: String,
    pub finding_updated_at_ms: i64,
    pub reason: String,
    pub event_id: String,
    pub event_region: String,
    #[serde(default)]
    pub event_name: Option<String>,
    #[serde(default)]
    pub event_time_ms: Option<i64>,
}

impl From<&crate::normalize::cloudtrail::FindingEvent> for LinkedEvent {
    fn from(link: &crate::normalize::cloudtrail::FindingEvent) -> Self {
        LinkedEvent {
            finding_id: link.finding_id.clone(),
            finding_updated_at_ms: link.finding_updated_at_ms,
            reason: link.reason.to_owned(),
            event_id: link.event_id.clone(),
            event_region: link.event_region.clone(),
            event_name: link.event_name.clone(),
            event_time_ms: link.event_time_ms,
        }
    }
}

impl LinkedEvent {
    /// Why the event is linked, most telling first: the finding's own API call, then its
    /// access key or principal, then the watch-list.
    fn rank(&self) -> u8 {
        match self.reason.as_str() {
            "api" => 0,
            "access_key" => 1,
            "principal" => 2,
            _ => 3,
        }
    }
}

/// Keeps at most [`LINKED_PER_ALERT`] links per finding version: best reason, then latest.
pub fn top_links(mut links: Vec<LinkedEvent>) -> Vec<LinkedEvent> {
    links.sort_by(|a, b| {
        (
            &a.finding_id,
            a.finding_updated_at_ms,
            a.rank(),
            std::cmp::Reverse(a.event_time_ms),
        )
            .cmp(&(
                &b.finding_id,
                b.finding_updated_at_ms,
                b.rank(),
                std::cmp::Reverse(b.event_time_ms),
            ))
    });
    let mut kept: Vec<LinkedEvent> = Vec::new();
    let mut run = 0;
    for link in links {
        let same = kept.last().is_some_and(|l| {
            l.finding_id == link.finding_id && l.finding_updated_at_ms == link.finding_updated_at_ms
        });
        run = if same { run + 1 } else { 0 };
        if run < LINKED_PER_ALERT {
            kept.push(link);
        }
    }
    kept
}

impl Candidate {
    /// A candidate from a version and what changed since `previous`.
    pub fn of(
        row: &FindingVersion,
        previous: Option<&history::Seen>,
        triggers: Vec<Trigger>,
    ) -> Self {
        let growth = previous.and_then(|p| Some(row.count? - p.count?));
        let hours = previous.map(|p| (row.updated_at_ms - p.updated_ms) as f64 / 3_600_000.0);
        Candidate {
            finding_id: row.id.clone(),
            account_id: row.account_id.clone(),
            account_name: None,
            ou_path: None,
            region: row.region.clone(),
            partition: row.partition.clone(),
            finding_type: row.finding_type.clone(),
            severity: row.severity,
            title: row.title.clone(),
            description: row.description.clone(),
            resource: Resource {
                resource_type: row.resource_type.clone(),
                instance_id: row.instance_id.clone(),
                access_key_id: row.access_key_id.clone(),
                principal_id: row.principal_id.clone(),
                user_name: row.user_name.clone(),
                s3_bucket_names: row.s3_bucket_names.clone(),
                eks_cluster_name: row.eks_cluster_name.clone(),
            },
            remote_ip: row.remote_ip.clone(),
            remote_port: row.remote_port,
            remote_country: row.remote_country.clone(),
            remote_org: row.remote_org.clone(),
            local_port: row.local_port,
            api: row.api.clone(),
            count: row.count,
            count_growth: growth,
            count_per_hour: match (growth, hours) {
                (Some(g), Some(h)) if h > 0.0 => Some(g as f64 / h),
                _ => None,
            },
            previous_severity: previous.map(|p| p.severity),
            previous_updated_at_ms: previous.map(|p| p.updated_ms),
            created_at_ms: row.created_at_ms,
            updated_at_ms: row.updated_at_ms,
            first_seen_ms: row.event_first_seen_ms,
            last_seen_ms: row.event_last_seen_ms,
            archived: row.archived.unwrap_or(false),
            sample: row.sample,
            triggers,
            linked_events: Vec::new(),
        }
    }

    /// The dedup key: the finding id for a new finding; the id and version for a change of one
    /// (so each escalation is its own alert, and a resend is recognizable).
    pub fn dedup_key(&self, trigger: Trigger) -> String {
        match trigger {
            Trigger::New => self.finding_id.clone(),
            _ => format!("{}:{}", self.finding_id, self.updated_at_ms),
        }
    }
}
