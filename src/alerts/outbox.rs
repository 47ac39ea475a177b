//! A run's outbox, `_state/alerts/outbox/<run_id>.json`: the candidates it found and the
//! events it owes (finding alerts, new coverage gaps, the digest), each with its delivery
//! status. It is created by the run's journal, so it exists exactly when the data does; the
//! gaps already reported live in `_state/alerts/gaps.json`, committed the same way.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::rules::{first_match, label, Rule};
use super::{Candidate, LinkedEvent, COVERAGE_GAP, FINDING_ALERT, RUN_DIGEST};
use crate::clock::{day_of, iso};
use crate::discover::AccountFacts;
use crate::report::TargetOutcome;
use crate::state::journal::Checkpoint;
use crate::table::Table;

pub const DIR: &str = "_state/alerts/outbox/";
pub const GAPS_KEY: &str = "_state/alerts/gaps.json";
/// Failed targets a digest names (the rest are counted).
const DIGEST_FAILURES: usize = 50;
/// Finding alerts one run stages at most; the digest counts the rest (an alert storm pages
/// nobody a thousand times).
pub const MAX_FINDING_ALERTS: usize = 2000;

pub fn key(run_id: &str) -> String {
    format!("{DIR}{run_id}.json")
}

/// Where an event stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Status {
    /// Not delivered yet; `attempts` runs tried.
    Pending {
        attempts: u32,
    },
    Sent {
        event_id: String,
    },
    /// Staged by a run with no bus configured: never sent (`alerts --dry-run` shows it).
    NotSent,
    /// Given up after repeated failures, or refused for good.
    Failed {
        code: String,
        message: String,
    },
}

/// One event the run owes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub detail_type: String,
    pub dedup_key: String,
    pub detail: Value,
    pub status: Status,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbox {
    pub run_id: String,
    pub created_at_ms: i64,
    /// The lake's location, for pointers in the events.
    pub lake: String,
    pub candidates: Vec<Candidate>,
    pub entries: Vec<Entry>,
}

impl Outbox {
    pub fn pending(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.status, Status::Pending { .. }))
            .count()
    }
}

/// The gaps each account × region had at its last run: `"<account>/<region>" → gaps`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GapState {
    pub cells: BTreeMap<String, Vec<String>>,
}

/// Everything a run's outbox is made of.
pub struct Inputs<'a> {
    pub run_id: &'a str,
    pub run_start_ms: i64,
    pub lake: String,
    pub rules: &'a [Rule],
    pub candidates: Vec<Candidate>,
    pub linked: Vec<LinkedEvent>,
    pub facts: &'a BTreeMap<String, AccountFacts>,
    /// This run's gaps per (account, region), and the ones reported before.
    pub gaps: BTreeMap<(String, String), Vec<String>>,
    pub previous_gaps: GapState,
    pub outcomes: &'a [TargetOutcome],
    /// New finding versions published, by severity label.
    pub severities: BTreeMap<String, u64>,
}

/// The outbox (None when the run has nothing to say) and the gap state to commit.
pub fn build(inputs: Inputs<'_>) -> (Option<Outbox>, GapState) {
    let Inputs {
        run_id,
        run_start_ms,
        lake,
        rules,
        mut candidates,
        linked,
        facts,
        gaps,
        previous_gaps,
        outcomes,
        severities,
    } = inputs;
    enrich(&mut candidates, linked, facts);
    let matched = finding_entries(rules, &candidates, run_id, &lake);
    let mut entries = matched.entries;
    let (state, gap_entries, new_gaps) = new_gaps(run_id, facts, &gaps, &previous_gaps);
    entries.extend(gap_entries);
    let failed: Vec<&TargetOutcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    let published: u64 = severities.values().sum();
    // A failing target is a gap of its cell, reported once as new; a digest per run with
    // nothing new would page the channel every run.
    if published > 0 || new_gaps > 0 {
        let facts = DigestFacts {
            severities: &severities,
            by_rule: &matched.by_rule,
            suppressed: matched.suppressed,
            new_gaps,
            failed: &failed,
        };
        entries.push(digest(run_id, &lake, &candidates, facts));
    }
    if entries.is_empty() && candidates.is_empty() {
        return (None, state);
    }
    let outbox = Outbox {
        run_id: run_id.to_owned(),
        created_at_ms: run_start_ms,
        lake,
        candidates,
        entries,
    };
    (Some(outbox), state)
}

/// The finding alerts the rules make of `candidates` (the first rule a candidate matches, at
/// most [`MAX_FINDING_ALERTS`]), with their count by rule and how many were over the cap.
pub struct FindingEntries {
    pub entries: Vec<Entry>,
    pub by_rule: BTreeMap<String, u64>,
    pub suppressed: u64,
}

pub fn finding_entries(
    rules: &[Rule],
    candidates: &[Candidate],
    run_id: &str,
    lake: &str,
) -> FindingEntries {
    let mut matched = FindingEntries {
        entries: Vec::new(),
        by_rule: BTreeMap::new(),
        suppressed: 0,
    };
    for candidate in candidates {
        let Some((rule, trigger)) = first_match(rules, candidate) else {
            continue;
        };
        if matched.entries.len() >= MAX_FINDING_ALERTS {
            matched.suppressed += 1;
            continue;
        }
        *matched.by_rule.entry(rule.name.clone()).or_default() += 1;
        matched
            .entries
            .push(finding_entry(candidate, &rule.name, trigger, run_id, lake));
    }
    matched
}

/// A Coverage Gap event per account × region with gaps it did not have at its last run, the
/// gap state after this run, and how many gaps are new.
fn new_gaps(
    run_id: &str,
    facts: &BTreeMap<String, AccountFacts>,
    gaps: &BTreeMap<(String, String), Vec<String>>,
    previous: &GapState,
) -> (GapState, Vec<Entry>, usize) {
    let mut state = previous.clone();
    let mut entries = Vec::new();
    let mut count = 0;
    for ((account, region), cell_gaps) in gaps {
        let key = format!("{account}/{region}");
        let before: BTreeSet<&String> = previous.cells.get(&key).into_iter().flatten().collect();
        let fresh: Vec<&String> = cell_gaps.iter().filter(|g| !before.contains(g)).collect();
        count += fresh.len();
        if !fresh.is_empty() {
            let name = facts.get(account).and_then(|f| f.name.clone());
            let dedup_key = format!("coverage:{account}:{region}:{run_id}");
            entries.push(Entry {
                detail_type: COVERAGE_GAP.into(),
                dedup_key: dedup_key.clone(),
                detail: json!({
                    "dedup_key": dedup_key,
                    "run_id": run_id,
                    "account_id": account,
                    "account_name": name,
                    "region": region,
                    "new_gaps": fresh,
                    "new_gaps_text": fresh.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(", "),
                    "gaps": cell_gaps,
                }),
                status: Status::Pending { attempts: 0 },
            });
        }
        match cell_gaps.is_empty() {
            true => state.cells.remove(&key),
            false => state.cells.insert(key, cell_gaps.clone()),
        };
    }
    (state, entries, count)
}

/// Account names, OU paths and linked events into the candidates.
fn enrich(
    candidates: &mut [Candidate],
    linked: Vec<LinkedEvent>,
    facts: &BTreeMap<String, AccountFacts>,
) {
    let mut by_version: BTreeMap<(String, i64), Vec<LinkedEvent>> = BTreeMap::new();
    for link in super::top_links(linked) {
        by_version
            .entry((link.finding_id.clone(), link.finding_updated_at_ms))
            .or_default()
            .push(link);
    }
    for candidate in candidates {
        if let Some(f) = facts.get(&candidate.account_id) {
            candidate.account_name = f.name.clone();
            candidate.ou_path = f.ou_path.clone();
        }
        if let Some(links) =
            by_version.remove(&(candidate.finding_id.clone(), candidate.updated_at_ms))
        {
            candidate.linked_events = links;
        }
    }
}

/// The GuardDuty console page of a finding.
pub fn console_url(candidate: &Candidate) -> String {
    let host = match candidate.partition.as_deref() {
        Some("aws-us-gov") => "console.amazonaws-us-gov.com",
        Some("aws-cn") => "console.amazonaws.cn",
        _ => "console.aws.amazon.com",
    };
    format!(
        "https://{host}/guardduty/home?region={r}#/findings?macros=current&fId={id}",
        r = candidate.region,
        id = candidate.finding_id
    )
}

/// A finding alert's detail: the summary, the context and where the version is in the lake.
pub fn finding_entry(
    candidate: &Candidate,
    rule: &str,
    trigger: super::Trigger,
    run_id: &str,
    lake: &str,
) -> Entry {
    let dedup_key = candidate.dedup_key(trigger);
    let dt = day_of(candidate.updated_at_ms);
    let time = |ms: Option<i64>| ms.map(iso);
    let linked: Vec<Value> = candidate
        .linked_events
        .iter()
        .map(|l| {
            json!({"event_id": l.event_id, "event_name": l.event_name, "event_time": time(l.event_time_ms),
                   "region": l.event_region, "reason": l.reason})
        })
        .collect();
    let detail = json!({
        "dedup_key": dedup_key,
        "rule": rule,
        "alert": trigger.as_str(),
        "triggers": candidate.triggers.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        "finding_id": candidate.finding_id,
        "account_id": candidate.account_id,
        "account_name": candidate.account_name,
        "ou_path": candidate.ou_path,
        "region": candidate.region,
        "severity": candidate.severity,
        "severity_label": label(candidate.severity),
        "previous_severity": candidate.previous_severity,
        "type": candidate.finding_type,
        "title": candidate.title,
        "description": candidate.description,
        "resource": candidate.resource,
        "remote_ip": candidate.remote_ip,
        "remote_port": candidate.remote_port,
        "remote_country": candidate.remote_country,
        "remote_org": candidate.remote_org,
        "local_port": candidate.local_port,
        "api": candidate.api,
        "count": candidate.count,
        "count_growth": candidate.count_growth,
        "count_per_hour": candidate.count_per_hour,
        "first_seen": time(candidate.first_seen_ms),
        "last_seen": time(candidate.last_seen_ms),
        "created_at": iso(candidate.created_at_ms),
        "updated_at": iso(candidate.updated_at_ms),
        "archived": candidate.archived,
        "sample": candidate.sample,
        "console_url": console_url(candidate),
        "linked_events": linked,
        "lake": {
            "table": "findings",
            "location": format!("{}/{}", lake.trim_end_matches('/'), Table::Findings.key(dt, "")),
            "query": format!("SELECT * FROM findings WHERE dt = '{dt}' AND id = '{}' AND updated_at = from_iso8601_timestamp('{}')",
                candidate.finding_id.replace('\'', "''"), iso(candidate.updated_at_ms)),
        },
        "run_id": run_id,
    });
    Entry {
        detail_type: FINDING_ALERT.into(),
        dedup_key,
        detail,
        status: Status::Pending { attempts: 0 },
    }
}

/// A new High or Critical finding that is neither a sample nor archived.
fn is_new_urgent(c: &Candidate) -> bool {
    c.triggers.contains(&super::Trigger::New) && c.severity >= 7.0 && !c.sample && !c.archived
}

struct DigestFacts<'a> {
    severities: &'a BTreeMap<String, u64>,
    by_rule: &'a BTreeMap<String, u64>,
    suppressed: u64,
    new_gaps: usize,
    failed: &'a [&'a TargetOutcome],
}

/// The run's digest: what was published by severity, new High/Critical findings, alerts by
/// rule, new gaps and failed targets.
fn digest(run_id: &str, lake: &str, candidates: &[Candidate], facts: DigestFacts<'_>) -> Entry {
    let urgent: Vec<Value> = candidates
        .iter()
        .filter(|c| is_new_urgent(c))
        .take(20)
        .map(|c| json!({"finding_id": c.finding_id, "account_id": c.account_id, "region": c.region,
                        "severity_label": label(c.severity), "type": c.finding_type, "title": c.title}))
        .collect();
    let new_urgent = candidates.iter().filter(|c| is_new_urgent(c)).count();
    let failures: Vec<Value> = facts
        .failed
        .iter()
        .take(DIGEST_FAILURES)
        .map(|o| {
            let f = o.failure.as_ref();
            json!({"account_id": o.account_id, "region": o.region, "source": o.source.as_str(),
                   "status": f.map(|f| f.status.as_str()), "error_class": f.map(|f| f.class.clone())})
        })
        .collect();
    let dedup_key = format!("digest:{run_id}");
    let by_label: Vec<String> = ["CRITICAL", "HIGH", "MEDIUM", "LOW"]
        .iter()
        .filter_map(|l| facts.severities.get(*l).map(|n| format!("{l} {n}")))
        .collect();
    let summary = format!(
        "*{}* new finding versions ({})\n*{new_urgent}* new High/Critical findings\n*{}* new coverage gaps\n*{}* failed targets",
        facts.severities.values().sum::<u64>(),
        by_label.join(", "),
        facts.new_gaps,
        facts.failed.len()
    );
    Entry {
        detail_type: RUN_DIGEST.into(),
        dedup_key: dedup_key.clone(),
        detail: json!({
            "dedup_key": dedup_key,
            "run_id": run_id,
            "lake": lake,
            "published_by_severity": facts.severities,
            "published": facts.severities.values().sum::<u64>(),
            "new_high_critical": new_urgent,
            "new_high_critical_findings": urgent,
            "alerts_by_rule": facts.by_rule,
            "alerts_suppressed": facts.suppressed,
            "new_coverage_gaps": facts.new_gaps,
            "failed_targets": facts.failed.len(),
            "failed_target_list": failures,
            "summary": summary,
        }),
        status: Status::Pending { attempts: 0 },
    }
}

/// The checkpoints that commit a run's outbox (created, never replaced) and gap state.
pub fn checkpoints(
    outbox: Option<&Outbox>,
    gaps: (&GapState, Option<crate::sink::store::Tag>),
    previous: &GapState,
) -> Vec<Checkpoint> {
    let mut checkpoints = Vec::new();
    if let Some(outbox) = outbox {
        if let Ok(body) = serde_json::to_string(outbox) {
            checkpoints.push(Checkpoint {
                key: key(&outbox.run_id),
                body,
                expected: None,
            });
        }
    }
    if gaps.0 != previous {
        if let Ok(body) = serde_json::to_string(gaps.0) {
            checkpoints.push(Checkpoint {
                key: GAPS_KEY.into(),
                body,
                expected: gaps.1,
            });
        }
    }
    checkpoints
}
