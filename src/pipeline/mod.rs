//! The pipeline, written once against the [`Source`] trait: a source names its targets' state
//! and collects one target; [`collect_all`] loads each target's checkpoint, runs the targets
//! with bounded concurrency, classifies what failed, and returns the outcomes and the
//! checkpoints to commit. [`publish::Publish`] stages files and commits them with the
//! checkpoints through one journal. Nothing here knows which process collected what: the
//! outcomes, checkpoints and files are plain data, so collecting a subset of targets and
//! committing can happen in different processes.

pub mod alerting;
pub mod batch;
pub mod canary;
pub mod coverage;
pub mod drift;
pub mod events;
pub mod findings;
pub mod lock;
pub mod publish;
pub mod workdir;
pub mod writer;

use std::future::Future;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;

use crate::aws::Aws;
use crate::config::{Mode, ValidatedConfig};
use crate::error::{classify_store, RunError, TargetFailure, TargetStatus};
use crate::report::TargetOutcome;
use crate::sink::store::{Store, Tag};
use crate::state::journal::Checkpoint;
use crate::table::SourceName;

/// A window given on the command line: a backfill re-collects it, adding only what the lake
/// does not have, and leaves checkpoints alone.
#[derive(Debug, Clone, Copy)]
pub struct Backfill {
    pub since_ms: i64,
    pub until_ms: i64,
}

/// Everything a run needs beyond the validated config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub s3_path_style: bool,
    pub backfill: Option<Backfill>,
    /// Compact closed partitions after publishing.
    pub compact: bool,
    /// Log the summary (JSON) instead of printing it on stdout (Lambda).
    pub quiet: bool,
}

/// What every stage of one run shares.
pub struct Run<'a> {
    pub config: &'a ValidatedConfig,
    pub options: &'a RunOptions,
    pub aws: &'a Aws,
    pub store: &'a Arc<Store>,
    pub run_id: &'a str,
    pub run_start_ms: i64,
    /// The run's scratch directory (encoded files before staging).
    pub work_dir: &'a std::path::Path,
    /// What this process's files are named after: the run id, or the run id and its shard.
    pub stem: &'a str,
}

impl Run<'_> {
    pub fn mode(&self) -> Mode {
        self.config.mode
    }
}

/// What one target's collection ended with: a `runs` row per (account, region) it covers, and
/// the checkpoint to commit (None keeps the one it had).
#[derive(Debug)]
pub struct Collected<S> {
    pub outcomes: Vec<TargetOutcome>,
    pub state: Option<S>,
}

/// One kind of data guardlake reads. A target is the unit that shares a checkpoint.
pub trait Source: Sync {
    type Target: Send + Sync;
    /// The checkpoint body, under `_state/`; a missing one is the default (a first run).
    type State: Serialize + DeserializeOwned + Default + Send;

    fn name(&self) -> SourceName;
    fn state_key(&self, target: &Self::Target) -> String;
    /// The (account, region) pairs a failure of the whole target is reported for.
    fn cells(&self, target: &Self::Target) -> Vec<(String, String)>;
    /// The log span of a target.
    fn span(&self, target: &Self::Target) -> tracing::Span;
    /// Collects one target from its checkpoint. Rows go to the source's writers as they come.
    fn collect(
        &self,
        target: &Self::Target,
        state: Self::State,
    ) -> impl Future<Output = Collected<Self::State>> + Send;
}

/// The outcomes and checkpoints of one source's targets.
#[derive(Debug, Default)]
pub struct Gathered {
    pub outcomes: Vec<TargetOutcome>,
    pub checkpoints: Vec<Checkpoint>,
}

/// Reads a checkpoint of type `S` and its version tag. Unreadable or corrupt state is a
/// classified failure of its target (naming the key), never a silent default: a reset would
/// re-read the lookback and could publish twice.
pub async fn load_state<S: DeserializeOwned + Default>(
    store: &Store,
    key: &str,
) -> Result<(S, Option<Tag>), TargetFailure> {
    match store.get_tagged(key).await {
        Ok(None) => Ok((S::default(), None)),
        Ok(Some((bytes, tag))) => match serde_json::from_slice(&bytes) {
            Ok(state) => Ok((state, Some(tag))),
            Err(e) => Err(TargetFailure::new(
                TargetStatus::Error,
                "CorruptState",
                format!(
                    "{}: not a valid checkpoint ({e}); fix or remove it",
                    store.uri(key)
                ),
            )),
        },
        Err(e) => Err(classify_store("s3:GetObject", &e)),
    }
}

/// Collects every target of `source` (at most `concurrency` at once) and returns their outcomes
/// and the checkpoints to commit, each conditional on the version it was read at.
pub async fn collect_all<S: Source>(
    source: &S,
    targets: Vec<S::Target>,
    store: &Store,
    concurrency: usize,
    mode: Mode,
) -> Result<Gathered, RunError> {
    let progress = progress_bar(targets.len() as u64, source.name());
    let results: Vec<_> = futures::stream::iter(targets)
        .map(|target| {
            let progress = progress.clone();
            let span = source.span(&target);
            async move {
                let result = collect_one(source, &target, store, mode).await;
                if let Some(bar) = &progress {
                    bar.inc(1);
                }
                result
            }
            .instrument(span)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    let mut gathered = Gathered::default();
    for result in results {
        let (outcomes, checkpoint) = result?;
        gathered.outcomes.extend(outcomes);
        gathered.checkpoints.extend(checkpoint);
    }
    Ok(gathered)
}

async fn collect_one<S: Source>(
    source: &S,
    target: &S::Target,
    store: &Store,
    mode: Mode,
) -> Result<(Vec<TargetOutcome>, Option<Checkpoint>), RunError> {
    let key = source.state_key(target);
    let started_at_ms = crate::clock::now_ms();
    let started = Instant::now();
    let (state, tag) = match load_state::<S::State>(store, &key).await {
        Ok(loaded) => loaded,
        Err(failure) => {
            tracing::warn!(key = %key, status = failure.status.as_str(), message = %failure.message, "Target's state is unusable; the target fails.");
            let outcomes = source
                .cells(target)
                .into_iter()
                .map(|(account, region)| {
                    let mut failed = TargetOutcome::failed(
                        &account,
                        &region,
                        source.name(),
                        mode,
                        failure.clone(),
                        started_at_ms,
                    );
                    failed.duration_ms = started.elapsed().as_millis() as i64;
                    failed
                })
                .collect();
            return Ok((outcomes, None));
        }
    };
    let collected = source.collect(target, state).await;
    let checkpoint = match collected.state {
        Some(state) => Some(Checkpoint {
            key,
            body: serde_json::to_string(&state).map_err(|e| RunError::Encode(e.to_string()))?,
            expected: tag,
        }),
        None => None,
    };
    Ok((collected.outcomes, checkpoint))
}

fn progress_bar(len: u64, source: SourceName) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() || len == 0 {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    let template = format!("{{spinner}} {source} targets {{pos}}/{{len}} [{{bar:30}}] {{elapsed}}");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    Some(bar)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::error::TargetStatus;
    use crate::pipeline::publish::Publish;

    /// A source whose state counts the runs that collected a target; the targets in `fail`
    /// fail (and keep their checkpoint).
    struct Fake {
        fail: HashSet<&'static str>,
    }

    #[derive(Debug, Default, PartialEq, Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Runs {
        runs: u32,
    }

    impl Source for Fake {
        type Target = &'static str;
        type State = Runs;

        fn name(&self) -> SourceName {
            SourceName::GuardDuty
        }
        fn state_key(&self, target: &&'static str) -> String {
            format!("_state/fake/{target}.json")
        }
        fn cells(&self, target: &&'static str) -> Vec<(String, String)> {
            vec![(target.to_string(), "us-east-1".into())]
        }
        fn span(&self, _: &&'static str) -> tracing::Span {
            tracing::Span::none()
        }
        async fn collect(&self, target: &&'static str, state: Runs) -> Collected<Runs> {
            let failure = self
                .fail
                .contains(target)
                .then(|| TargetFailure::new(TargetStatus::AccessDenied, "AccessDenied", "denied"));
            let outcome = TargetOutcome {
                account_id: target.to_string(),
                region: "us-east-1".into(),
                source: self.name(),
                mode: Mode::Member,
                failure: failure.clone(),
                findings_read: 0,
                findings_written: 0,
                findings_quarantined: 0,
                window_start_ms: None,
                window_end_ms: None,
                started_at_ms: 0,
                duration_ms: 0,
            };
            Collected {
                outcomes: vec![outcome],
                state: failure.is_none().then_some(Runs {
                    runs: state.runs + 1,
                }),
            }
        }
    }

    async fn one_run(
        store: &Store,
        work: &std::path::Path,
        fake: &Fake,
        run_id: &str,
    ) -> Vec<TargetOutcome> {
        let gathered = collect_all(fake, vec!["a", "b", "c"], store, 2, Mode::Member)
            .await
            .unwrap();
        let mut publish = Publish::new(run_id);
        publish
            .outcomes(gathered.outcomes)
            .checkpoints(gathered.checkpoints);
        let (outcomes, _) = publish.commit(store, None, work, 0).await.unwrap();
        outcomes
    }

    async fn runs_of(store: &Store, target: &str) -> Option<u32> {
        let bytes = store
            .get_tagged(&format!("_state/fake/{target}.json"))
            .await
            .unwrap()?
            .0;
        Some(serde_json::from_slice::<Runs>(&bytes).unwrap().runs)
    }

    #[tokio::test]
    async fn checkpoints_advance_only_for_targets_that_completed() {
        let lake = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let store = Store::Local {
            root: lake.path().to_owned(),
        };
        let fake = Fake {
            fail: HashSet::from(["b"]),
        };
        one_run(&store, work.path(), &fake, "run-1").await;
        one_run(
            &store,
            work.path(),
            &Fake {
                fail: HashSet::new(),
            },
            "run-2",
        )
        .await;
        assert_eq!(
            runs_of(&store, "a").await,
            Some(2),
            "read back and advanced"
        );
        assert_eq!(
            runs_of(&store, "b").await,
            Some(1),
            "the failed run left no checkpoint"
        );
        let outcomes = one_run(&store, work.path(), &fake, "run-3").await;
        assert_eq!(
            runs_of(&store, "b").await,
            Some(1),
            "a failure keeps the checkpoint it had"
        );
        let statuses: Vec<_> = outcomes
            .iter()
            .map(|o| (o.account_id.as_str(), o.status()))
            .collect();
        assert_eq!(
            statuses,
            [
                ("a", TargetStatus::Ok),
                ("b", TargetStatus::AccessDenied),
                ("c", TargetStatus::Ok)
            ]
        );
        assert!(
            store.list("_staging/").await.unwrap().is_empty(),
            "staging is cleaned up"
        );
        assert_eq!(
            store.list("runs/").await.unwrap().len(),
            3,
            "one runs file per run"
        );
    }

    #[tokio::test]
    async fn corrupt_state_fails_its_target_loudly_and_the_others_go_on() {
        let lake = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let store = Store::Local {
            root: lake.path().to_owned(),
        };
        let fake = Fake {
            fail: HashSet::new(),
        };
        one_run(&store, work.path(), &fake, "run-1").await;
        for (target, body) in [
            ("a", "{not json"),
            ("b", r#"{"runs": 1, "surprise": true}"#),
        ] {
            std::fs::write(lake.path().join(format!("_state/fake/{target}.json")), body).unwrap();
        }
        let outcomes = one_run(&store, work.path(), &fake, "run-2").await;
        for outcome in &outcomes[..2] {
            let failure = outcome
                .failure
                .as_ref()
                .expect("corrupt state fails the target");
            assert_eq!(
                (failure.status, failure.class.as_str()),
                (TargetStatus::Error, "CorruptState")
            );
            assert!(
                failure
                    .message
                    .contains(&format!("_state/fake/{}.json", outcome.account_id)),
                "{}",
                failure.message
            );
        }
        assert!(outcomes[2].failure.is_none());
        assert_eq!(runs_of(&store, "c").await, Some(2));
        let left = std::fs::read_to_string(lake.path().join("_state/fake/a.json")).unwrap();
        assert_eq!(
            left, "{not json",
            "a corrupt checkpoint is left for a person, never reset"
        );
    }
}
