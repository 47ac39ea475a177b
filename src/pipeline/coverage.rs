//! Proof of coverage: what a run learned about every account × region it covered (the
//! detector, its features, the member relationship, Runtime Monitoring agent health, the newest
//! finding), and the gaps that leaves, as one `coverage` row each.
//!
//! The GuardDuty source records a [`Cell`] per account × region as it reads; the publish joins
//! each with the target's `runs` outcome (a target that failed before learning anything still
//! gets its row) and the organization's facts, and classifies the gaps ([`gaps`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use serde::{Deserialize, Serialize};

use super::Run;
use crate::clock::day_of;
use crate::config::Mode;
use crate::discover::AccountFacts;
use crate::error::{RunError, TargetStatus};
use crate::normalize::schema;
use crate::pipeline::canary::CanaryStatus;
use crate::report::TargetOutcome;
use crate::sources::guardduty::{Feature, Runtime};
use crate::table::{SourceName, Table};

/// What one run learned about one account × region.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub account_id: String,
    pub region: String,
    pub detector_id: Option<String>,
    pub detector_status: Option<String>,
    pub frequency: Option<String>,
    /// None: not learned (the target failed first, or the member's detector was not readable).
    pub features: Option<Vec<Feature>>,
    /// Delegated-admin mode: whether ListMembers was read, and the member's relationship.
    pub membership: Option<Membership>,
    pub runtime: Option<Runtime>,
    /// The newest updatedAt among the findings read there.
    pub newest_ms: Option<i64>,
    /// Why some of this could not be learned (a coverage call that failed), `service:Call (Class)`.
    pub unverified: Option<String>,
    /// The newest canary of the account × region.
    #[serde(default)]
    pub canary: Option<CanaryStatus>,
}

/// A member account under the delegated administrator: its RelationshipStatus, or None when
/// ListMembers does not list it; the administrator's own account is `Admin`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Membership {
    Admin,
    Member(Option<String>),
}

impl Cell {
    pub fn new(account_id: &str, region: &str) -> Self {
        Cell {
            account_id: account_id.to_owned(),
            region: region.to_owned(),
            ..Cell::default()
        }
    }
}

/// Why an account × region is not fully covered; empty when it is. `outcome` is its GuardDuty
/// target's `runs` row; `required` the features that must be ENABLED.
pub fn gaps(cell: &Cell, outcome: &TargetOutcome, required: &[String]) -> Vec<String> {
    let mut gaps = Vec::new();
    if let Some(failure) = &outcome.failure {
        gaps.push(match (failure.status, failure.class.as_str()) {
            (_, "NoDetector") => "no_detector".to_owned(),
            (_, "DetectorDisabled") => "detector_disabled".to_owned(),
            (TargetStatus::RegionDisabled, _) => "region_not_opted_in".to_owned(),
            (TargetStatus::AccessDenied, class)
                if class == "AssumeRoleFailed" || failure.message.starts_with("sts:AssumeRole") =>
            {
                "role_denied".to_owned()
            }
            (TargetStatus::AccessDenied, _) => "access_denied".to_owned(),
            (_, class) => format!("collection_failed:{class}"),
        });
    }
    match &cell.membership {
        Some(Membership::Member(None)) => gaps.push("not_a_member".to_owned()),
        Some(Membership::Member(Some(status))) if status == "RegionDisabled" => {
            gaps.push("region_not_opted_in".to_owned())
        }
        Some(Membership::Member(Some(status))) if status != "Enabled" => {
            gaps.push("member_not_enabled".to_owned())
        }
        _ => {}
    }
    if let Some(features) = &cell.features {
        for name in required {
            let on = features
                .iter()
                .any(|f| &f.name == name && f.status == "ENABLED");
            if !on {
                gaps.push(format!("feature_off:{name}"));
            }
        }
    }
    let unhealthy = cell
        .runtime
        .as_ref()
        .and_then(|r| r.by_status.get("UNHEALTHY"));
    if unhealthy.is_some_and(|n| *n > 0) {
        gaps.push("runtime_unhealthy".to_owned());
    }
    if cell.canary.as_ref().is_some_and(|c| c.missing) {
        gaps.push("canary_missing".to_owned());
    }
    if let Some(call) = &cell.unverified {
        gaps.push(format!("coverage_unverified:{call}"));
    }
    gaps
}

/// Whether the region answered: DISABLED when it answered as a region not opted in.
fn region_opt_status(cell: &Cell, outcome: &TargetOutcome) -> Option<&'static str> {
    match outcome.status() {
        TargetStatus::RegionDisabled => Some("DISABLED"),
        _ if cell.detector_id.is_some() || cell.membership.is_some() => Some("ENABLED"),
        TargetStatus::Ok | TargetStatus::NotEnabled => Some("ENABLED"),
        _ => None,
    }
}

/// One row: a cell, its target's outcome, the account's facts and its gaps.
struct Row<'a> {
    cell: Cell,
    outcome: &'a TargetOutcome,
    facts: Option<&'a AccountFacts>,
    gaps: Vec<String>,
}

/// The rows of a run: a cell per GuardDuty outcome of one account × region (an outcome the
/// source recorded nothing for gets an empty cell), sorted by account and region.
fn rows<'a>(
    cells: Vec<Cell>,
    outcomes: &'a [TargetOutcome],
    facts: &'a BTreeMap<String, AccountFacts>,
    required: &[String],
) -> Vec<Row<'a>> {
    let mut by_cell: HashMap<(String, String), Cell> = cells
        .into_iter()
        .map(|c| ((c.account_id.clone(), c.region.clone()), c))
        .collect();
    let mut rows: Vec<Row<'a>> = outcomes
        .iter()
        .filter(|o| o.source == SourceName::GuardDuty && o.region != "*")
        .map(|outcome| {
            let key = (outcome.account_id.clone(), outcome.region.clone());
            let cell = by_cell
                .remove(&key)
                .unwrap_or_else(|| Cell::new(&key.0, &key.1));
            let gaps = gaps(&cell, outcome, required);
            Row {
                facts: facts.get(&outcome.account_id),
                cell,
                outcome,
                gaps,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        (&a.cell.account_id, &a.cell.region).cmp(&(&b.cell.account_id, &b.cell.region))
    });
    rows
}

/// The features as `FEATURE` and `FEATURE/ADDITIONAL`, those ENABLED (`on`) or the others.
fn feature_names(features: &[Feature], on: bool) -> Vec<String> {
    let mut names = Vec::new();
    for f in features {
        if (f.status == "ENABLED") == on {
            names.push(f.name.clone());
        }
        for (name, status) in &f.additional {
            if (status == "ENABLED") == on {
                names.push(format!("{}/{name}", f.name));
            }
        }
    }
    names
}

/// The `coverage` RecordBatch, columns in `schemas/coverage.json` order.
fn batch(run: (&str, i64), mode: Mode, rows: &[Row<'_>]) -> Result<RecordBatch, ArrowError> {
    let table = schema::coverage().arrow_schema();
    let strings = |f: &dyn Fn(&Row<'_>) -> Option<String>| schema::strings(rows, f);
    let lists =
        |f: &dyn Fn(&Row<'_>) -> Option<Vec<String>>| schema::string_lists(rows.iter().map(f));
    let longs = |f: &dyn Fn(&Row<'_>) -> Option<i64>| schema::longs(rows, f);
    let times = |f: &dyn Fn(&Row<'_>) -> Option<i64>| schema::times(rows, f);
    let mut columns = Vec::new();
    for field in table.fields() {
        columns.push(match field.name().as_str() {
            "run_id" => strings(&|_| Some(run.0.to_owned())),
            "account_id" => strings(&|r| Some(r.cell.account_id.clone())),
            "region" => strings(&|r| Some(r.cell.region.clone())),
            "mode" => strings(&|_| Some(mode.as_str().to_owned())),
            "account_status" => strings(&|r| r.facts.and_then(|f| f.status.clone())),
            "ou_path" => strings(&|r| r.facts.and_then(|f| f.ou_path.clone())),
            "region_opt_status" => {
                strings(&|r| region_opt_status(&r.cell, r.outcome).map(str::to_owned))
            }
            "status" => strings(&|r| Some(r.outcome.status().as_str().to_owned())),
            "error_class" => strings(&|r| r.outcome.failure.as_ref().map(|f| f.class.clone())),
            "detector_id" => strings(&|r| r.cell.detector_id.clone()),
            "detector_status" => strings(&|r| r.cell.detector_status.clone()),
            "finding_publishing_frequency" => strings(&|r| r.cell.frequency.clone()),
            "features_enabled" => {
                lists(&|r| r.cell.features.as_deref().map(|f| feature_names(f, true)))
            }
            "features_disabled" => {
                lists(&|r| r.cell.features.as_deref().map(|f| feature_names(f, false)))
            }
            "features_json" => strings(&|r| r.cell.features.as_ref().and_then(json)),
            "member_relationship" => strings(&|r| match &r.cell.membership {
                Some(Membership::Member(status)) => status.clone(),
                _ => None,
            }),
            "runtime_healthy" => longs(&|r| agents(&r.cell, "HEALTHY")),
            "runtime_unhealthy" => longs(&|r| agents(&r.cell, "UNHEALTHY")),
            "runtime_json" => strings(&|r| r.cell.runtime.as_ref().and_then(json)),
            "newest_finding_updated_at" => times(&|r| r.cell.newest_ms),
            "canary_id" => strings(&|r| r.cell.canary.as_ref().map(|c| c.id.clone())),
            "canary_requested_at" => times(&|r| r.cell.canary.as_ref().map(|c| c.requested_at_ms)),
            "canary_latency_ms" => longs(&|r| r.cell.canary.as_ref().and_then(|c| c.latency_ms)),
            "gaps" => lists(&|r| Some(r.gaps.clone())),
            "collected_at" => times(&|_| Some(run.1)),
            other => {
                return Err(ArrowError::SchemaError(format!(
                    "schemas/coverage.json has column {other} that coverage does not fill"
                )))
            }
        });
    }
    RecordBatch::try_new(table, columns)
}

/// Runtime Monitoring agents in a coverage status (None: not read).
fn agents(cell: &Cell, status: &str) -> Option<i64> {
    let runtime = cell.runtime.as_ref()?;
    Some(runtime.by_status.get(status).copied().unwrap_or(0))
}

/// JSON text of what a cell holds.
fn json<T: Serialize>(value: &T) -> Option<String> {
    serde_json::to_string(value).ok()
}

/// What a run learned of coverage: its `coverage` file (None when it covered nothing), and
/// the gaps of each (account, region) for the alerts.
pub struct Coverage {
    pub file: Option<(PathBuf, String)>,
    pub gaps: BTreeMap<(String, String), Vec<String>>,
}

/// The run's coverage: a row per GuardDuty outcome.
pub fn file(
    run: &Run<'_>,
    cells: Vec<Cell>,
    outcomes: &[TargetOutcome],
    facts: &BTreeMap<String, AccountFacts>,
) -> Result<Coverage, RunError> {
    let rows = rows(cells, outcomes, facts, &run.config.required_features);
    let gaps = rows
        .iter()
        .map(|r| {
            (
                (r.cell.account_id.clone(), r.cell.region.clone()),
                r.gaps.clone(),
            )
        })
        .collect();
    Ok(Coverage {
        file: encode(run, &rows)?,
        gaps,
    })
}

fn encode(run: &Run<'_>, rows: &[Row<'_>]) -> Result<Option<(PathBuf, String)>, RunError> {
    if rows.is_empty() {
        return Ok(None);
    }
    let batch = batch((run.run_id, run.run_start_ms), run.mode(), rows)
        .map_err(|e| RunError::Encode(e.to_string()))?;
    let name = format!("{}-coverage.parquet", run.stem);
    let path = run.work_dir.join(&name);
    crate::sink::parquet::write_file(&path, &batch).map_err(|e| RunError::Encode(e.to_string()))?;
    let gaps: usize = rows.iter().filter(|r| !r.gaps.is_empty()).count();
    tracing::info!(cells = rows.len(), with_gaps = gaps, "Coverage recorded.");
    Ok(Some((
        path,
        Table::Coverage.key(day_of(run.run_start_ms), &name),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TargetFailure;

    fn outcome(failure: Option<TargetFailure>) -> TargetOutcome {
        let mut o = TargetOutcome::failed(
            "111111111111",
            "eu-west-1",
            SourceName::GuardDuty,
            Mode::Member,
            TargetFailure::new(TargetStatus::Error, "x", "x"),
            0,
        );
        o.failure = failure;
        o
    }

    fn feature(name: &str, status: &str) -> Feature {
        Feature {
            name: name.into(),
            status: status.into(),
            additional: Vec::new(),
        }
    }

    #[test]
    fn each_gap_is_named_and_a_healthy_cell_has_none() {
        let required = vec!["CLOUD_TRAIL".to_owned(), "S3_DATA_EVENTS".to_owned()];
        let mut healthy = Cell::new("111111111111", "eu-west-1");
        healthy.features = Some(vec![
            feature("CLOUD_TRAIL", "ENABLED"),
            feature("S3_DATA_EVENTS", "ENABLED"),
            feature("RUNTIME_MONITORING", "DISABLED"),
        ]);
        assert!(
            gaps(&healthy, &outcome(None), &required).is_empty(),
            "a feature off but not required is no gap"
        );

        let mut s3_off = healthy.clone();
        s3_off.features = Some(vec![
            feature("CLOUD_TRAIL", "ENABLED"),
            feature("S3_DATA_EVENTS", "DISABLED"),
        ]);
        assert_eq!(
            gaps(&s3_off, &outcome(None), &required),
            ["feature_off:S3_DATA_EVENTS"]
        );

        let failed = |status, class: &str, message: &str| {
            let cell = Cell::new("111111111111", "eu-west-1");
            gaps(
                &cell,
                &outcome(Some(TargetFailure::new(status, class, message))),
                &required,
            )
        };
        assert_eq!(
            failed(TargetStatus::NotEnabled, "NoDetector", ""),
            ["no_detector"]
        );
        assert_eq!(
            failed(TargetStatus::NotEnabled, "DetectorDisabled", ""),
            ["detector_disabled"]
        );
        assert_eq!(
            failed(
                TargetStatus::RegionDisabled,
                "UnrecognizedClientException",
                ""
            ),
            ["region_not_opted_in"]
        );
        assert_eq!(
            failed(
                TargetStatus::AccessDenied,
                "AccessDenied",
                "sts:AssumeRole: denied"
            ),
            ["role_denied"]
        );
        assert_eq!(
            failed(
                TargetStatus::AccessDenied,
                "AccessDeniedException",
                "guardduty:ListFindings"
            ),
            ["access_denied"]
        );
        assert_eq!(
            failed(TargetStatus::Throttled, "ThrottlingException", ""),
            ["collection_failed:ThrottlingException"]
        );
    }

    #[test]
    fn members_and_agents_have_their_gaps() {
        let required = vec!["CLOUD_TRAIL".to_owned()];
        let mut healthy = Cell::new("111111111111", "eu-west-1");
        healthy.features = Some(vec![feature("CLOUD_TRAIL", "ENABLED")]);
        let mut member = healthy.clone();
        member.membership = Some(Membership::Member(Some("Disabled".into())));
        assert_eq!(
            gaps(&member, &outcome(None), &required),
            ["member_not_enabled"]
        );
        member.membership = Some(Membership::Member(None));
        assert_eq!(gaps(&member, &outcome(None), &required), ["not_a_member"]);
        member.membership = Some(Membership::Member(Some("RegionDisabled".into())));
        assert_eq!(
            gaps(&member, &outcome(None), &required),
            ["region_not_opted_in"]
        );
        member.membership = Some(Membership::Member(Some("Enabled".into())));
        assert!(gaps(&member, &outcome(None), &required).is_empty());
        let mut runtime = healthy.clone();
        runtime.runtime = Some(Runtime {
            by_status: BTreeMap::from([("HEALTHY".into(), 3), ("UNHEALTHY".into(), 1)]),
            by_type: BTreeMap::new(),
        });
        assert_eq!(
            gaps(&runtime, &outcome(None), &required),
            ["runtime_unhealthy"]
        );
    }
}
