//! The same binary as a Lambda function: started by Lambda (AWS_LAMBDA_RUNTIME_API is set), it
//! serves invocations with lambda_runtime; each invocation is one `guardlake run` configured by
//! the function's environment (the `GUARDLAKE_*` variables of `--help`), which the scheduled
//! event's payload may override for one run. The run summary is returned, logged as JSON, and
//! emitted as a CloudWatch embedded metric format line. A payload with a `step` is one step of
//! a distributed run (`plan`, `shard`, `commit`: the Step Functions state machine's calls).

use serde::{Deserialize, Serialize};

use crate::config::{Config, ValidatedConfig};
use crate::pipeline::{Backfill, RunOptions};
use crate::report::TargetOutcome;
use crate::table::SourceName;

/// What a scheduled event may carry. Every member is optional; an empty payload runs as configured.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// Backfill window start (RFC 3339 or a UTC date); needs `until`.
    pub since: Option<String>,
    /// Backfill window end (RFC 3339 or a UTC date, exclusive).
    pub until: Option<String>,
    /// Accounts instead of the configured ones.
    pub accounts: Option<Vec<String>>,
    /// Regions instead of the configured ones.
    pub regions: Option<Vec<String>>,
    /// Alert rules instead of the configured ones (the `[[alerts]]` keys, as a JSON list).
    pub alerts: Option<crate::alerts::AlertRules>,
    /// The EventBridge bus alerts go to, instead of the configured one.
    pub alerts_bus: Option<String>,
}

/// A step of a distributed run (the Step Functions state machine's payloads):
/// `{"step":"plan"}`, `{"step":"shard","run_id":R,"key":K}` (a Distributed Map item: the shard
/// or CloudTrail batch file's S3 key; or `"shard":N`), `{"step":"plan-trail","run_id":R}`,
/// `{"step":"commit","run_id":R}`.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StepPayload {
    pub step: StepName,
    pub run_id: Option<String>,
    pub shard: Option<u32>,
    pub key: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum StepName {
    Plan,
    Shard,
    PlanTrail,
    Commit,
    /// Not a distributed step: `guardlake canary` (the canary schedule's payload).
    Canary,
}

impl StepPayload {
    /// The run id, checked (it names keys of the lake).
    fn run_id(&self) -> Result<String, String> {
        let id = self.run_id.as_deref().ok_or("this step needs run_id")?;
        uuid::Uuid::parse_str(id)
            .map(|u| u.to_string())
            .map_err(|_| format!("{id:?} is not a run id"))
    }

    /// The shard number: `shard`, or the number in the name of the shard file `key` (which
    /// must be one of this run's shard files).
    fn shard(&self, run_id: &str) -> Result<u32, String> {
        match (self.shard, &self.key) {
            (Some(n), None) => Ok(n),
            (None, Some(key)) => {
                let name = ["shards", "trail"]
                    .iter()
                    .find_map(|folder| {
                        key.rsplit_once(&format!("_state/plans/{run_id}/{folder}/"))
                            .map(|(_, name)| name)
                    })
                    .ok_or_else(|| format!("{key:?} is not a shard file of run {run_id}"))?;
                name.strip_suffix(".json")
                    .filter(|n| n.len() == 5)
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| format!("{key:?} is not a shard file (NNNNN.json)"))
            }
            _ => Err("a shard step needs exactly one of shard and key".into()),
        }
    }
}

/// Runs one step of a distributed run; its answer is what the state machine passes on.
async fn step(
    payload: StepPayload,
    base: Config,
    s3_path_style: bool,
) -> Result<serde_json::Value, lambda_runtime::Diagnostic> {
    let invalid = |e: String| failure("InvalidPayload", format!("invalid step payload: {e}"));
    let config = base.validate().map_err(|e| invalid(e.to_string()))?;
    let options = RunOptions {
        s3_path_style,
        quiet: true,
        ..RunOptions::default()
    };
    let failed = |e: crate::error::RunError| failure(e.name(), e.to_string());
    let answer = match payload.step {
        StepName::Plan => serde_json::to_value(
            crate::distributed::plan(config, options)
                .await
                .map_err(failed)?,
        ),
        StepName::Shard => {
            let run_id = payload.run_id().map_err(invalid)?;
            let shard = payload.shard(&run_id).map_err(invalid)?;
            let done = crate::distributed::shard(config, options, &run_id, shard)
                .await
                .map_err(failed)?;
            Ok(done.summary(&run_id))
        }
        StepName::PlanTrail => {
            let run_id = payload.run_id().map_err(invalid)?;
            serde_json::to_value(
                crate::distributed::trail::plan_trail(config, options, &run_id)
                    .await
                    .map_err(failed)?,
            )
        }
        StepName::Canary => {
            let done = crate::canary::request(config, options)
                .await
                .map_err(failed)?;
            Ok(serde_json::json!({
                "canaries": done.canaries.len(),
                "failed": done.failed.len(),
            }))
        }
        StepName::Commit => {
            let run_id = payload.run_id().map_err(invalid)?;
            let started = std::time::Instant::now();
            let result = crate::distributed::commit(config, options, &run_id)
                .await
                .map_err(failed)?;
            serde_json::to_value(finished(&result, started))
        }
    };
    answer.map_err(|e| failure("EncodeFailed", e.to_string()))
}

/// What an invocation returns.
#[derive(Debug, Serialize, PartialEq)]
pub struct Summary {
    pub targets: usize,
    pub targets_ok: usize,
    pub targets_failed: usize,
    pub findings_written: u64,
    pub events_written: u64,
    pub published: bool,
    pub duration_ms: u64,
}

impl Payload {
    /// The configuration of this invocation: the function's, with the payload's overrides.
    /// A payload only narrows: its accounts and regions must be among the configured ones (an
    /// organization-wide configuration checks the accounts once they are discovered).
    pub fn apply(&self, base: Config) -> Result<(ValidatedConfig, Option<Backfill>), String> {
        let outside = |named: &Option<Vec<String>>, configured: &Option<Vec<String>>| {
            let (Some(named), Some(configured)) = (named, configured) else {
                return Vec::new();
            };
            if configured.iter().any(|c| c == "enabled") {
                return Vec::new();
            }
            named
                .iter()
                .filter(|n| !configured.contains(n))
                .cloned()
                .collect::<Vec<String>>()
        };
        let accounts = outside(&self.accounts, &base.accounts);
        if !accounts.is_empty() {
            return Err(format!(
                "accounts {} are not among the configured accounts; a payload may only narrow them",
                accounts.join(", ")
            ));
        }
        let regions = outside(&self.regions, &base.regions);
        if !regions.is_empty() {
            return Err(format!(
                "regions {} are not among the configured regions; a payload may only narrow them",
                regions.join(", ")
            ));
        }
        let overrides = Config {
            accounts: self.accounts.clone().filter(|_| base.accounts.is_some()),
            only_accounts: self.accounts.clone().filter(|_| base.accounts.is_none()),
            regions: self.regions.clone(),
            alerts: self.alerts.clone(),
            alerts_bus: self.alerts_bus.clone(),
            ..Config::default()
        };
        let config = base
            .overridden_by(overrides)
            .validate()
            .map_err(|e| e.to_string())?;
        let backfill = match (&self.since, &self.until) {
            (Some(since), Some(until)) => {
                let ms = |t: &str| crate::cli::parse_time(t).map(|t| t.timestamp_millis());
                let (since_ms, until_ms) = (ms(since)?, ms(until)?);
                if since_ms >= until_ms {
                    return Err("since must be before until".into());
                }
                Some(Backfill { since_ms, until_ms })
            }
            (None, None) => None,
            _ => return Err("since and until go together".into()),
        };
        Ok((config, backfill))
    }
}

pub fn summarize(outcomes: &[TargetOutcome], published: bool, duration_ms: u64) -> Summary {
    let ok = outcomes.iter().filter(|o| o.failure.is_none()).count();
    let written = |source: SourceName| {
        outcomes
            .iter()
            .filter(|o| o.source == source)
            .map(|o| o.findings_written)
            .sum()
    };
    Summary {
        targets: outcomes.len(),
        targets_ok: ok,
        targets_failed: outcomes.len() - ok,
        findings_written: written(SourceName::GuardDuty),
        events_written: written(SourceName::CloudTrail),
        published,
        duration_ms,
    }
}

/// The summary of a finished run (single or committed), also printed as an EMF line.
fn finished(result: &crate::run::RunResult, started: std::time::Instant) -> Summary {
    let summary = summarize(
        &result.outcomes,
        result.published,
        started.elapsed().as_millis() as u64,
    );
    println!(
        "{}",
        emf_line(&summary, chrono::Utc::now().timestamp_millis())
    );
    summary
}

/// One CloudWatch embedded-metric-format line for a run's summary.
pub fn emf_line(summary: &Summary, timestamp_ms: i64) -> String {
    serde_json::json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": "guardlake",
                "Dimensions": [[]],
                "Metrics": [
                    {"Name": "TargetsOk", "Unit": "Count"},
                    {"Name": "TargetsFailed", "Unit": "Count"},
                    {"Name": "FindingsWritten", "Unit": "Count"},
                    {"Name": "EventsWritten", "Unit": "Count"},
                    {"Name": "Duration", "Unit": "Milliseconds"}
                ]
            }]
        },
        "TargetsOk": summary.targets_ok,
        "TargetsFailed": summary.targets_failed,
        "FindingsWritten": summary.findings_written,
        "EventsWritten": summary.events_written,
        "Duration": summary.duration_ms,
    })
    .to_string()
}

/// An invocation's error as Lambda reports it: a stable `errorType` (`InvalidPayload`, or
/// [`crate::error::RunError::name`]) and a one-line message.
fn failure(error_type: &str, message: String) -> lambda_runtime::Diagnostic {
    lambda_runtime::Diagnostic {
        error_type: error_type.to_owned(),
        error_message: crate::error::one_line(&message, 4096),
    }
}

/// Serves invocations until Lambda stops the process.
pub async fn serve(base: Config, s3_path_style: bool) -> Result<(), lambda_runtime::Error> {
    let handler = lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<serde_json::Value>| {
            let base = base.clone();
            async move {
                let started = std::time::Instant::now();
                if event.payload.get("step").is_some() {
                    let payload: StepPayload =
                        serde_json::from_value(event.payload).map_err(|e| {
                            failure("InvalidPayload", format!("invalid step payload: {e}"))
                        })?;
                    return step(payload, base, s3_path_style).await;
                }
                let payload: Payload = match event.payload {
                    serde_json::Value::Null => Payload::default(),
                    // An EventBridge rule's "Scheduled Event" carries no overrides.
                    serde_json::Value::Object(ref map)
                        if map.is_empty() || map.contains_key("detail-type") =>
                    {
                        Payload::default()
                    }
                    // EventBridge Scheduler sends the target's Input as it is: it must be a Payload.
                    value => serde_json::from_value(value).map_err(|e| {
                        failure("InvalidPayload", format!("invalid event payload: {e}"))
                    })?,
                };
                let (config, backfill) = payload.apply(base).map_err(|e| {
                    failure("InvalidPayload", format!("invalid event payload: {e}"))
                })?;
                let options = RunOptions {
                    s3_path_style,
                    backfill,
                    compact: false,
                    quiet: true,
                };
                let result = crate::run::run(config, options)
                    .await
                    .map_err(|e| failure(e.name(), e.to_string()))?;
                serde_json::to_value(finished(&result, started))
                    .map_err(|e| failure("EncodeFailed", e.to_string()))
            }
        },
    );
    lambda_runtime::run(handler).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_overrides_and_validates() {
        let payload: Payload = serde_json::from_str(r#"{"regions":["eu-west-1"],"since":"2026-11-01T00:00:00Z","until":"2026-11-02T00:00:00Z"}"#).unwrap();
        let (config, backfill) = payload.apply(Config::default()).unwrap();
        assert_eq!(
            config.regions,
            crate::config::Regions::List(vec!["eu-west-1".into()])
        );
        assert_eq!(backfill.map(|b| b.until_ms - b.since_ms), Some(86_400_000));
        let bad: Payload = serde_json::from_str(r#"{"regions":["nowhere"]}"#).unwrap();
        assert!(bad
            .apply(Config::default())
            .unwrap_err()
            .contains("regions"));
        assert!(
            serde_json::from_str::<Payload>(r#"{"region":"x"}"#).is_err(),
            "unknown members are refused"
        );
    }

    #[test]
    fn a_payload_only_narrows_the_configuration() {
        let base = Config {
            accounts: Some(vec!["111111111111".into(), "222222222222".into()]),
            regions: Some(vec!["eu-west-1".into(), "us-east-1".into()]),
            ..Config::default()
        };
        let payload = |json: &str| serde_json::from_str::<Payload>(json).unwrap();
        let (narrowed, _) = payload(r#"{"accounts":["222222222222"],"regions":["us-east-1"]}"#)
            .apply(base.clone())
            .unwrap();
        assert_eq!(narrowed.accounts, Some(vec!["222222222222".to_owned()]));
        let more = payload(r#"{"accounts":["333333333333"]}"#)
            .apply(base.clone())
            .unwrap_err();
        assert!(
            more.contains("333333333333") && more.contains("narrow"),
            "{more}"
        );
        let region = payload(r#"{"regions":["ap-south-1"]}"#)
            .apply(base)
            .unwrap_err();
        assert!(region.contains("ap-south-1"), "{region}");
        // Organization-wide: the payload's accounts filter what discovery finds.
        let (org, _) = payload(r#"{"accounts":["333333333333"]}"#)
            .apply(Config::default())
            .unwrap();
        assert_eq!(
            (org.accounts, org.only_accounts),
            (None, Some(vec!["333333333333".to_owned()]))
        );
    }

    #[test]
    fn a_shard_item_names_its_shard_by_the_file_key() {
        let run = "01a22523-15c9-7663-a2dd-5c91c247264d";
        let item = |json: String| serde_json::from_str::<StepPayload>(&json).unwrap();
        let key = format!("guardlake/_state/plans/{run}/shards/00007.json");
        let payload = item(format!(
            r#"{{"step":"shard","run_id":"{run}","key":"{key}"}}"#
        ));
        assert_eq!(payload.shard(&payload.run_id().unwrap()), Ok(7));
        let batch = item(format!(
            r#"{{"step":"shard","run_id":"{run}","key":"_state/plans/{run}/trail/00012.json"}}"#
        ));
        assert_eq!(batch.shard(run), Ok(12), "a CloudTrail batch file");
        let trail = item(format!(r#"{{"step":"plan-trail","run_id":"{run}"}}"#));
        assert_eq!(trail.step, StepName::PlanTrail);
        assert_eq!(
            item(r#"{"step":"canary"}"#.to_owned()).step,
            StepName::Canary
        );
        let other = item(format!(
            r#"{{"step":"shard","run_id":"{run}","key":"x/_state/plans/other/shards/00007.json"}}"#
        ));
        assert!(other.shard(run).is_err(), "another run's shard file");
        let bad = item(r#"{"step":"commit","run_id":"../x"}"#.to_owned());
        assert!(bad.run_id().is_err());
        assert!(serde_json::from_str::<StepPayload>(r#"{"step":"publish"}"#).is_err());
    }

    #[test]
    fn emf_line_names_each_metric() {
        let summary = Summary {
            targets: 3,
            targets_ok: 2,
            targets_failed: 1,
            findings_written: 7,
            events_written: 0,
            published: true,
            duration_ms: 12,
        };
        let line: serde_json::Value = serde_json::from_str(&emf_line(&summary, 5)).unwrap();
        assert_eq!(
            line["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "guardlake"
        );
        assert_eq!(
            (
                line["TargetsOk"].as_u64(),
                line["TargetsFailed"].as_u64(),
                line["FindingsWritten"].as_u64()
            ),
            (Some(2), Some(1), Some(7))
        );
    }
}
