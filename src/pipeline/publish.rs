//! How a run's output becomes visible, exactly once: every file is staged under
//! `_staging/<run_id>/`, one journal names the copies and the checkpoints, and applying the
//! journal publishes them. The journal is the commit point; a crash after it is rolled
//! forward by the next run, a crash before it leaves only staging that recovery deletes.

use std::path::PathBuf;

use crate::clock::day_of;
use crate::error::RunError;
use crate::report::{self, TargetOutcome};
use crate::sink::parquet as pq;
use crate::sink::store::Store;
use crate::state::journal::{self, Checkpoint, Copy, Journal};
use crate::state::lock::RunLock;
use crate::state::{crash_point, CrashPoint, Phase, Step};
use crate::table::Table;

/// What one publish gathers: files (local path → lake key), checkpoints, and the `runs` rows.
pub struct Publish {
    run_id: String,
    /// The journal and staging id: the run id, or the run id and a later step's name.
    journal_id: String,
    files: Vec<(PathBuf, String)>,
    /// Files another process already staged under this run's prefix: (staged key, lake key).
    staged: Vec<(String, String)>,
    staged_bytes: u64,
    checkpoints: Vec<Checkpoint>,
    outcomes: Vec<TargetOutcome>,
    /// CloudTrail events linked to the published finding versions, for their alerts.
    linked: Vec<crate::alerts::LinkedEvent>,
}

/// What a commit wrote: table files (not `_` folders) and bytes staged.
#[derive(Debug, Default)]
pub struct Committed {
    pub files: usize,
    pub bytes: u64,
}

impl Publish {
    pub fn new(run_id: &str) -> Self {
        Self {
            run_id: run_id.to_owned(),
            journal_id: run_id.to_owned(),
            files: Vec::new(),
            staged: Vec::new(),
            staged_bytes: 0,
            checkpoints: Vec::new(),
            outcomes: Vec::new(),
            linked: Vec::new(),
        }
    }

    /// A second, smaller publish of a run after its commit (`step`: e.g. `alerts`): its own
    /// journal and `runs` file, rows still naming the run.
    pub fn step(run_id: &str, step: &str) -> Self {
        let mut publish = Self::new(run_id);
        publish.journal_id = format!("{run_id}-{step}");
        publish
    }

    pub fn files(&mut self, files: impl IntoIterator<Item = (PathBuf, String)>) -> &mut Self {
        self.files.extend(files);
        self
    }

    /// Files already staged (by a shard) under `_staging/<run_id>/`, and their bytes.
    pub fn staged(
        &mut self,
        copies: impl IntoIterator<Item = (String, String)>,
        bytes: u64,
    ) -> &mut Self {
        self.staged.extend(copies);
        self.staged_bytes += bytes;
        self
    }

    pub fn checkpoints(&mut self, checkpoints: impl IntoIterator<Item = Checkpoint>) -> &mut Self {
        self.checkpoints.extend(checkpoints);
        self
    }

    pub fn outcomes(&mut self, outcomes: impl IntoIterator<Item = TargetOutcome>) -> &mut Self {
        self.outcomes.extend(outcomes);
        self
    }

    /// Links of published finding versions to CloudTrail events (alerting runs).
    pub fn linked(
        &mut self,
        links: impl IntoIterator<Item = crate::alerts::LinkedEvent>,
    ) -> &mut Self {
        self.linked.extend(links);
        self
    }

    /// The links gathered so far, handed to the alerts.
    pub fn take_linked(&mut self) -> Vec<crate::alerts::LinkedEvent> {
        std::mem::take(&mut self.linked)
    }

    /// The `runs` rows gathered so far.
    pub fn gathered_outcomes(&self) -> &[TargetOutcome] {
        &self.outcomes
    }

    /// Sorts the `runs` rows by account, region and source.
    fn sort_outcomes(&mut self) {
        self.outcomes.sort_by(|a, b| {
            (&a.account_id, &a.region, a.source).cmp(&(&b.account_id, &b.region, b.source))
        });
    }

    /// Writes the `runs` rows, stages every file, writes the journal (if `lock` still names
    /// this run) and applies it. The outcomes are handed back for the summary.
    pub async fn commit(
        mut self,
        store: &Store,
        lock: Option<&RunLock>,
        work_dir: &std::path::Path,
        run_start_ms: i64,
    ) -> Result<(Vec<TargetOutcome>, Committed), RunError> {
        self.sort_outcomes();
        let run_id = self.journal_id.clone();
        let runs = report::runs_batch(&self.run_id, &self.outcomes)
            .map_err(|e| RunError::Encode(e.to_string()))?;
        let runs_path = work_dir.join("runs.parquet");
        pq::write_file(&runs_path, &runs).map_err(|e| RunError::Encode(e.to_string()))?;
        self.files.push((
            runs_path,
            Table::Runs.key(day_of(run_start_ms), &format!("{run_id}.parquet")),
        ));

        let mut journal = Journal {
            run_id: run_id.clone(),
            kind: "run".into(),
            checkpoints: std::mem::take(&mut self.checkpoints),
            ..Journal::default()
        };
        let mut committed = stage(store, &run_id, &self.files, &mut journal).await?;
        for (from, to) in std::mem::take(&mut self.staged) {
            committed.files += usize::from(!to.starts_with('_'));
            journal.copies.push(Copy { from, to });
        }
        committed.bytes += self.staged_bytes;
        // Still ours? Then commit: from the journal on, the run's output is as good as published.
        if let Some(lock) = lock {
            lock.renew(store).await.map_err(RunError::from)?;
        }
        crash_point(CrashPoint::BeforeJournal);
        journal::write(store, &journal)
            .await
            .map_err(|e| RunError::Publish(e.to_string()))?;
        crash_point(CrashPoint::Journal(Phase::Run, Step::AfterJournal));
        // Committed: from here a failure leaves the rest to the next run's roll-forward.
        journal::apply(store, &journal, Phase::Run)
            .await
            .map_err(|e| RunError::Deferred(e.to_string()))?;
        Ok((self.outcomes, committed))
    }
}

/// Uploads every file under the run's staging prefix and names its copy in the journal.
async fn stage(
    store: &Store,
    run_id: &str,
    files: &[(PathBuf, String)],
    journal: &mut Journal,
) -> Result<Committed, RunError> {
    let staging = journal::staging_prefix(run_id);
    let mut committed = Committed::default();
    for (i, (path, key)) in files.iter().enumerate() {
        let staged = format!("{staging}{key}");
        committed.bytes += store
            .create_from_file(path, &staged)
            .await
            .map_err(RunError::from)?;
        committed.files += usize::from(!key.starts_with('_'));
        journal.copies.push(Copy {
            from: staged,
            to: key.clone(),
        });
        if i == 0 {
            crash_point(CrashPoint::MidStageUpload);
        }
    }
    crash_point(CrashPoint::AfterStageUpload);
    Ok(committed)
}
