//! `guardlake canary`: asks GuardDuty for one sample finding of `canary_type` in every account ×
//! region a run covers (CreateSampleFindings through the member role, which must allow it: the
//! member stack's `EnableCanary`), and records each request for the runs that will see it
//! arrive (see [`crate::pipeline::canary`]). It takes the lake's lock, as it writes state.

use std::sync::Arc;

use tracing::{info, warn};

use crate::clock::now_ms;
use crate::config::ValidatedConfig;
use crate::error::{classify, classify_store, RunError, TargetFailure, TargetStatus};
use crate::pipeline::canary::{key, Canary, CanaryState};
use crate::pipeline::findings::{self, Chain};
use crate::pipeline::lock::{open, with_lock};
use crate::pipeline::{load_state, Run, RunOptions};
use crate::sink::store::PutError;
use crate::sources::guardduty as gd;
use crate::state::lock::RunLock;

/// What `guardlake canary` did: the canaries requested, and the targets where it could not.
#[derive(Debug, Default)]
pub struct Requested {
    pub canaries: Vec<(String, String, String)>,
    pub failed: Vec<(String, String, TargetFailure)>,
}

pub async fn request(config: ValidatedConfig, options: RunOptions) -> Result<Requested, RunError> {
    let run_id = uuid::Uuid::now_v7().to_string();
    let opened = open(&config, &options, &run_id).await?;
    let run = opened.run(&config, &options, (&run_id, now_ms()), &run_id);
    let run = &run;
    let body = |_lock: Arc<RunLock>| async move { request_all(run).await };
    with_lock(&opened.store, &run_id, config.lock_lease_secs, body).await
}

async fn request_all(run: &Run<'_>) -> Result<Requested, RunError> {
    let accounts = crate::run::accounts(run).await?;
    let (chains, failed) = findings::targets(run, &accounts.active).await;
    let mut done = Requested::default();
    for outcome in failed {
        if let Some(failure) = outcome.failure {
            done.failed
                .push((outcome.account_id, outcome.region, failure));
        }
    }
    for chain in chains {
        match one(run, &chain).await {
            Ok(id) => {
                info!(account_id = %chain.account_id, region = %chain.region, canary = %id, "Canary requested.");
                done.canaries.push((chain.account_id, chain.region, id));
            }
            Err(failure) => {
                warn!(account_id = %chain.account_id, region = %chain.region, message = %failure.message, "Canary not requested.");
                done.failed.push((chain.account_id, chain.region, failure));
            }
        }
    }
    Ok(done)
}

/// One account × region (in delegated-admin mode, the administrator's own: samples are created
/// in the caller's account): the sample, then its record.
async fn one(run: &Run<'_>, chain: &Chain) -> Result<String, TargetFailure> {
    let sdk = run.aws.account_config(&chain.account_id).await?;
    let client = run.aws.guardduty(&sdk, &chain.region);
    let detector = gd::detector(&client).await?;
    detector.readable()?;
    let requested_at_ms = now_ms();
    client
        .create_sample_findings()
        .detector_id(&detector.id)
        .finding_types(&run.config.canary_type)
        .send()
        .await
        .map_err(|e| classify("guardduty:CreateSampleFindings", &e))?;
    let key = key(&chain.account_id, &chain.region);
    let (mut state, tag) = load_state::<CanaryState>(run.store, &key).await?;
    let id = uuid::Uuid::now_v7().to_string();
    state.request(Canary {
        id: id.clone(),
        finding_type: run.config.canary_type.clone(),
        requested_at_ms,
    });
    let body = serde_json::to_vec(&state).unwrap_or_default();
    match run.store.put_if(&key, body, tag.as_ref()).await {
        Ok(_) => Ok(id),
        Err(PutError::Store(e)) => Err(classify_store("s3:PutObject", &e)),
        Err(conflict) => Err(TargetFailure::new(
            TargetStatus::Error,
            "CanaryStateChanged",
            format!(
                "{}: {conflict}; request the canary again",
                run.store.uri(&key)
            ),
        )),
    }
}
