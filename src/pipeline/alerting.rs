//! Alerts around the commit: [`stage`] adds the run's outbox and gap state to the journal;
//! [`deliver`] sends what every outbox owes once the commit is done, and records the delivery
//! as a `runs` row (source `alerts`) of its own, so a failure shows where failures show.

use std::collections::BTreeMap;
use std::time::Instant;

use tracing::warn;

use super::batch::Batch;
use super::publish::Publish;
use super::Run;
use crate::alerts::emit;
use crate::alerts::outbox::{self, GapState, Inputs};
use crate::alerts::Delivery;
use crate::discover::AccountFacts;
use crate::error::{RunError, TargetFailure, TargetStatus};
use crate::report::TargetOutcome;
use crate::state::journal::Checkpoint;
use crate::state::{crash_point, CrashPoint};
use crate::table::SourceName;

/// The checkpoints that commit the run's outbox and gap state (none when alerts are off).
pub async fn stage(
    run: &Run<'_>,
    batch: &mut Batch,
    facts: &BTreeMap<String, AccountFacts>,
    gaps: BTreeMap<(String, String), Vec<String>>,
    outcomes: &[TargetOutcome],
) -> Result<Vec<Checkpoint>, RunError> {
    let Some(alerts) = &run.config.alerts else {
        return Ok(Vec::new());
    };
    let (previous, tag) = match run.store.get_tagged(outbox::GAPS_KEY).await {
        Ok(None) => (GapState::default(), None),
        Ok(Some((bytes, tag))) => match serde_json::from_slice::<GapState>(&bytes) {
            Ok(state) => (state, Some(tag)),
            Err(e) => {
                warn!(key = %run.store.uri(outbox::GAPS_KEY), error = %e, "The reported coverage gaps are unreadable; every gap counts as new and the file is replaced.");
                (GapState::default(), Some(tag))
            }
        },
        Err(e) => return Err(RunError::from(e)),
    };
    let (mut built, state) = outbox::build(Inputs {
        run_id: run.run_id,
        run_start_ms: run.run_start_ms,
        lake: run.store.uri(""),
        rules: &alerts.rules,
        candidates: std::mem::take(&mut batch.alerts),
        linked: std::mem::take(&mut batch.linked),
        facts,
        gaps,
        previous_gaps: previous.clone(),
        outcomes,
        severities: std::mem::take(&mut batch.severities),
    });
    if let (Some(outbox), None) = (&mut built, &alerts.bus) {
        for entry in &mut outbox.entries {
            entry.status = outbox::Status::NotSent;
        }
    }
    if let Some(outbox) = &built {
        tracing::info!(
            candidates = outbox.candidates.len(),
            events = outbox.entries.len(),
            "Alerts staged with the commit."
        );
    }
    Ok(outbox::checkpoints(
        built.as_ref(),
        (&state, tag),
        &previous,
    ))
}

/// After the commit: sends every pending outbox to the bus and publishes the delivery's
/// `runs` row. Never fails the run: a delivery problem is reported and retried next run.
pub async fn deliver(run: &Run<'_>, lock: &crate::state::lock::RunLock) -> Option<Delivery> {
    let Some(bus) = run.config.alerts.as_ref()?.bus.as_deref() else {
        emit::forget_old(run.store).await;
        return None;
    };
    crash_point(CrashPoint::BeforeAlerts);
    let started = (crate::clock::now_ms(), Instant::now());
    let client = run.aws.events(bus);
    let delivery = emit::deliver(run.store, &client, bus).await;
    if delivery.due == 0 && delivery.error.is_none() {
        return Some(delivery);
    }
    let failure = match (&delivery.error, delivery.failed + delivery.pending) {
        (Some((code, message)), undelivered) if undelivered > 0 => Some(TargetFailure::new(
            TargetStatus::Error,
            "AlertsUndelivered",
            format!("{undelivered} alert(s) not delivered to {bus}: {code}: {message}"),
        )),
        _ => None,
    };
    let outcome = TargetOutcome {
        account_id: run.aws.home_account.clone(),
        region: run.aws.home_region.clone(),
        source: SourceName::Alerts,
        mode: run.mode(),
        failure,
        findings_read: delivery.due,
        findings_written: delivery.sent,
        findings_quarantined: delivery.failed,
        window_start_ms: None,
        window_end_ms: None,
        started_at_ms: started.0,
        duration_ms: started.1.elapsed().as_millis() as i64,
    };
    let mut publish = Publish::step(run.run_id, "alerts");
    publish.outcomes([outcome]);
    if let Err(e) = publish
        .commit(run.store, Some(lock), run.work_dir, run.run_start_ms)
        .await
    {
        warn!(error = %e, "Could not record the alert delivery in runs.");
    }
    Some(delivery)
}

/// `guardlake alerts --dry-run`: the events the last run's outbox would hold under the rules
/// configured now (the default rules when none are), one JSON object per line, as PutEvents
/// would send them. Reads the lake only; sends nothing.
pub async fn dry_run(
    config: &crate::config::ValidatedConfig,
    store: &crate::sink::store::Store,
) -> Result<Vec<serde_json::Value>, RunError> {
    let mut keys = emit::outbox_keys(store).await.map_err(RunError::from)?;
    let Some(last) = keys.pop() else {
        return Ok(Vec::new());
    };
    let outbox = emit::read(store, &last).await.map_err(RunError::Publish)?;
    let rules = match &config.alerts {
        Some(alerts) => alerts.rules.clone(),
        None => crate::alerts::rules::validate(&crate::alerts::rules::defaults())
            .map_err(RunError::Publish)?,
    };
    let findings =
        outbox::finding_entries(&rules, &outbox.candidates, &outbox.run_id, &outbox.lake).entries;
    let others = outbox
        .entries
        .iter()
        .filter(|e| e.detail_type != crate::alerts::FINDING_ALERT)
        .cloned();
    Ok(findings
        .into_iter()
        .chain(others)
        .map(|entry| {
            let detail: serde_json::Value =
                serde_json::from_str(&emit::fitted(&entry)).unwrap_or_default();
            serde_json::json!({
                "source": crate::alerts::SOURCE,
                "detail-type": entry.detail_type,
                "run_id": outbox.run_id,
                "detail": detail,
            })
        })
        .collect())
}

/// What `guardlake alerts` did.
pub enum Command {
    /// `--dry-run`: the events, as JSON objects.
    DryRun(Vec<serde_json::Value>),
    Delivered(Delivery),
}

/// `guardlake alerts`: with `--dry-run`, the events the last run would emit under the rules
/// configured now; without it, sends what every outbox still owes (under the lake's lock).
pub async fn command(
    config: crate::config::ValidatedConfig,
    options: super::RunOptions,
) -> Result<Command, RunError> {
    let run_id = uuid::Uuid::now_v7().to_string();
    if config.dry_run {
        let s3 = || async {
            crate::aws::s3_client(
                &crate::aws::base_config(&config).await,
                options.s3_path_style,
            )
        };
        let store = super::lock::open_store(&config, s3).await;
        return Ok(Command::DryRun(dry_run(&config, &store).await?));
    }
    if config
        .alerts
        .as_ref()
        .and_then(|a| a.bus.as_ref())
        .is_none()
    {
        return Err(RunError::Config(crate::config::ConfigError::Invalid {
            key: "alerts_bus",
            flag: "--alerts-bus",
            problem: "no bus to send the alerts to".into(),
            fix: "name the EventBridge bus, or use --dry-run to print the alerts".into(),
        }));
    }
    let opened = super::lock::open(&config, &options, &run_id).await?;
    let run = opened.run(
        &config,
        &options,
        (&run_id, crate::clock::now_ms()),
        &run_id,
    );
    let run = &run;
    let body = |lock: std::sync::Arc<crate::state::lock::RunLock>| async move {
        Ok(Command::Delivered(
            deliver(run, &lock).await.unwrap_or_default(),
        ))
    };
    super::lock::with_lock(&opened.store, &run_id, config.lock_lease_secs, body).await
}
