//! Staged publish with a journal: how a run (or a compaction) makes its files and checkpoints
//! visible all together or not at all, even when killed at any point.
//!
//! 1. Data files are written under `_staging/<run_id>/`, outside every table location.
//! 2. The journal `_state/journals/<run_id>.json` (copies, deletes, checkpoints) is created with
//!    `If-None-Match: *`: from here on the run is committed.
//! 3. Each staged file is copied to its deterministic final key (idempotent), replaced files
//!    are deleted, checkpoints are advanced (`If-Match` on the tag read when planning; a
//!    checkpoint that already holds the new body counts as done).
//! 4. The journal is deleted, then the staging prefix.
//!
//! On start, the lock holder rolls every journal forward (steps 3-4) and removes staging
//! prefixes that have no journal (runs that died before committing: their data was never
//! visible and their checkpoints never moved, so the next pull reads it again).

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{crash_point, CrashPoint, Phase, Step};
use crate::sink::store::{is_safe_key, PutError, Store, StoreError, Tag};

pub const JOURNALS: &str = "_state/journals/";
pub const STAGING: &str = "_staging/";

/// Staging prefix of a run.
pub fn staging_prefix(run_id: &str) -> String {
    format!("{STAGING}{run_id}/")
}

/// A staged file and where it becomes visible.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Copy {
    pub from: String,
    pub to: String,
}

/// A checkpoint to advance: its new body, and the tag it had when the run read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub key: String,
    pub body: String,
    pub expected: Option<Tag>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    pub run_id: String,
    /// What wrote it: `run` or `compact`.
    pub kind: String,
    pub copies: Vec<Copy>,
    /// Keys removed once the copies are in place (compaction replaces small files).
    pub deletes: Vec<String>,
    pub checkpoints: Vec<Checkpoint>,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error(
        "checkpoint {0} was changed by someone else since this run read it; refusing to overwrite"
    )]
    CheckpointConflict(String),
    #[error("journal {0} already exists")]
    JournalExists(String),
    #[error(
        "journal of run {run_id} names staged file {key} that is gone and was never published"
    )]
    MissingStaged { run_id: String, key: String },
    #[error("journal {journal} is refused: {reason}; nothing in it was applied")]
    Unsafe { journal: String, reason: String },
}

impl Journal {
    pub fn key(&self) -> String {
        format!("{JOURNALS}{}.json", self.run_id)
    }

    /// A journal is read back from the lake, so it is untrusted: every key it names must be one
    /// this protocol writes (staged files under its own run's staging, final keys in a table
    /// location or the quarantine, checkpoints under `_state/` but not its journals or lock).
    pub fn validate(&self) -> Result<(), String> {
        let run_ok = !self.run_id.is_empty()
            && self
                .run_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !run_ok {
            return Err(format!("run id {:?} is not a run id", self.run_id));
        }
        let staging = staging_prefix(&self.run_id);
        let visible = |key: &str| {
            is_safe_key(key)
                && !key.starts_with("_state/")
                && !key.starts_with(STAGING)
                && key.contains('/')
                && !key.ends_with('/')
        };
        for copy in &self.copies {
            if !(is_safe_key(&copy.from) && copy.from.starts_with(&staging)) {
                return Err(format!(
                    "copy source {:?} is not under {staging}",
                    copy.from
                ));
            }
            if !visible(&copy.to) {
                return Err(format!(
                    "copy target {:?} is not a table or quarantine key",
                    copy.to
                ));
            }
        }
        if let Some(key) = self.deletes.iter().find(|k| !visible(k)) {
            return Err(format!("delete {key:?} is not a table key"));
        }
        let checkpoint_ok = |key: &str| {
            is_safe_key(key)
                && key.starts_with("_state/")
                && !key.starts_with(JOURNALS)
                && key != crate::state::lock::LOCK_KEY
        };
        if let Some(c) = self.checkpoints.iter().find(|c| !checkpoint_ok(&c.key)) {
            return Err(format!("checkpoint {:?} is not a state key", c.key));
        }
        Ok(())
    }
}

/// Step 2 alone: creates the journal, after which the publish counts as committed.
pub async fn write(store: &Store, journal: &Journal) -> Result<(), PublishError> {
    let body = serde_json::to_vec(journal).map_err(|e| StoreError::new(journal.key(), e))?;
    match store.put_if(&journal.key(), body, None).await {
        Ok(_) => Ok(()),
        Err(PutError::Conflict(key)) => Err(PublishError::JournalExists(key)),
        Err(PutError::Store(e)) => Err(e.into()),
    }
}

/// Commits and applies a journal (steps 2-4). `phase` names its crash points.
pub async fn commit(store: &Store, journal: &Journal, phase: Phase) -> Result<(), PublishError> {
    write(store, journal).await?;
    crash_point(CrashPoint::Journal(phase, Step::AfterJournal));
    apply(store, journal, phase).await
}

/// Steps 3-4: copies, deletes, checkpoints, then the journal and the staging prefix go.
/// Every step is idempotent, so a roll-forward may repeat what a killed run already did.
pub async fn apply(store: &Store, journal: &Journal, phase: Phase) -> Result<(), PublishError> {
    journal.validate().map_err(|reason| PublishError::Unsafe {
        journal: journal.key(),
        reason,
    })?;
    for (i, copy) in journal.copies.iter().enumerate() {
        if !store.exists(&copy.from).await? {
            // Copied before a crash that came after the staging clean-up began? Then it is final.
            if store.exists(&copy.to).await? {
                continue;
            }
            return Err(PublishError::MissingStaged {
                run_id: journal.run_id.clone(),
                key: copy.from.clone(),
            });
        }
        store.copy(&copy.from, &copy.to).await?;
        if i == 0 {
            crash_point(CrashPoint::Journal(phase, Step::MidCopy));
        }
    }
    crash_point(CrashPoint::Journal(phase, Step::AfterCopy));
    for (i, key) in journal.deletes.iter().enumerate() {
        store.delete(key).await?;
        if i == 0 {
            crash_point(CrashPoint::Journal(phase, Step::MidDelete));
        }
    }
    crash_point(CrashPoint::Journal(phase, Step::BeforeCheckpoint));
    for (i, checkpoint) in journal.checkpoints.iter().enumerate() {
        match store
            .put_if(
                &checkpoint.key,
                checkpoint.body.clone().into_bytes(),
                checkpoint.expected.as_ref(),
            )
            .await
        {
            Ok(_) => {}
            Err(PutError::Conflict(key)) => {
                // Already advanced by an earlier attempt of this same journal?
                let current = store.get(&checkpoint.key).await?;
                if current.as_deref() != Some(checkpoint.body.as_bytes()) {
                    return Err(PublishError::CheckpointConflict(key));
                }
            }
            Err(PutError::Store(e)) => return Err(e.into()),
        }
        if i == 0 {
            crash_point(CrashPoint::Journal(phase, Step::MidCheckpoint));
        }
    }
    crash_point(CrashPoint::Journal(phase, Step::AfterCheckpoint));
    store.delete(&journal.key()).await?;
    crash_point(CrashPoint::Journal(phase, Step::AfterJournalDelete));
    remove_prefix(store, &staging_prefix(&journal.run_id), phase).await?;
    crash_point(CrashPoint::Journal(phase, Step::AfterStagingCleanup));
    Ok(())
}

async fn remove_prefix(store: &Store, prefix: &str, phase: Phase) -> Result<(), StoreError> {
    for (i, (key, _)) in store.list(prefix).await?.into_iter().enumerate() {
        store.delete(&key).await?;
        if i == 0 {
            crash_point(CrashPoint::Journal(phase, Step::MidStagingCleanup));
        }
    }
    Ok(())
}

/// What recovery did.
#[derive(Debug, Default, PartialEq)]
pub struct Recovery {
    pub rolled_forward: usize,
    pub discarded_runs: usize,
}

/// Rolls forward every committed journal and discards staging without one. Run it holding the
/// run lock, before new work.
pub async fn recover(store: &Store) -> Result<Recovery, PublishError> {
    let mut recovery = Recovery::default();
    for (key, _) in store.list(JOURNALS).await? {
        let Some(bytes) = store.get(&key).await? else {
            continue;
        };
        let journal: Journal = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::new(key.clone(), format!("journal is not valid JSON: {e}")))?;
        if journal.key() != key {
            return Err(PublishError::Unsafe {
                journal: key,
                reason: format!("it names run {:?}, not its own", journal.run_id),
            });
        }
        info!(run_id = %journal.run_id, kind = %journal.kind, files = journal.copies.len(), "Rolling forward a committed journal left by an interrupted run.");
        apply(store, &journal, Phase::Recovery).await?;
        recovery.rolled_forward += 1;
    }
    let mut orphans = std::collections::BTreeSet::new();
    for (key, _) in store.list(STAGING).await? {
        if let Some(run) = key
            .strip_prefix(STAGING)
            .and_then(|rest| rest.split('/').next())
        {
            orphans.insert(run.to_owned());
        }
    }
    for run in orphans {
        // `.tmp` holds local temporary files of writers that died; no journal names them.
        warn!(run_id = %run, "Discarding staged files of a run that died before committing.");
        remove_prefix(store, &format!("{STAGING}{run}/"), Phase::Recovery).await?;
        if run != ".tmp" {
            recovery.discarded_runs += 1;
        }
    }
    Ok(recovery)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Journals that name keys outside what they may touch.
    fn unsafe_journals(good: &Journal) -> Vec<Journal> {
        vec![
            Journal {
                copies: vec![Copy {
                    from: "../secret".into(),
                    to: "findings/dt=2026-11-01/x.parquet".into(),
                }],
                ..good.clone()
            },
            Journal {
                copies: vec![Copy {
                    from: "_staging/r1/x".into(),
                    to: "../x".into(),
                }],
                ..good.clone()
            },
            Journal {
                copies: vec![Copy {
                    from: "_staging/other/x".into(),
                    to: "findings/dt=2026-11-01/x.parquet".into(),
                }],
                ..good.clone()
            },
            Journal {
                deletes: vec!["../secret".into()],
                ..good.clone()
            },
            Journal {
                deletes: vec!["_state/lock.json".into()],
                ..good.clone()
            },
            Journal {
                checkpoints: vec![Checkpoint {
                    key: "_state/../../secret".into(),
                    body: "x".into(),
                    expected: None,
                }],
                ..good.clone()
            },
            Journal {
                checkpoints: vec![Checkpoint {
                    key: "findings/x".into(),
                    body: "x".into(),
                    expected: None,
                }],
                ..good.clone()
            },
            Journal {
                run_id: "../r1".into(),
                ..good.clone()
            },
        ]
    }

    #[tokio::test]
    async fn a_journal_pointing_outside_the_lake_is_refused_before_any_step() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("lake");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(outer.path().join("secret"), b"keep me").unwrap();
        let store = Store::Local { root: root.clone() };
        let good = Journal {
            run_id: "r1".into(),
            kind: "run".into(),
            copies: vec![Copy {
                from: "_staging/r1/findings/dt=2026-11-01/a.parquet".into(),
                to: "findings/dt=2026-11-01/a.parquet".into(),
            }],
            deletes: vec![],
            checkpoints: vec![],
        };
        assert_eq!(good.validate(), Ok(()));
        let bad = unsafe_journals(&good);
        for journal in bad {
            assert!(journal.validate().is_err(), "{journal:?}");
            let applied = apply(&store, &journal, Phase::Run).await;
            assert!(
                matches!(applied, Err(PublishError::Unsafe { .. })),
                "{applied:?}"
            );
        }
        // A journal stored under another run's name is refused by recovery.
        let key = format!("{JOURNALS}evil.json");
        std::fs::create_dir_all(root.join(JOURNALS)).unwrap();
        std::fs::write(root.join(&key), serde_json::to_vec(&good).unwrap()).unwrap();
        let recovered = recover(&store).await;
        assert!(
            matches!(recovered, Err(PublishError::Unsafe { .. })),
            "{recovered:?}"
        );
        assert_eq!(
            std::fs::read(outer.path().join("secret")).unwrap(),
            b"keep me"
        );
        assert_eq!(
            std::fs::read_dir(outer.path()).unwrap().count(),
            2,
            "nothing written outside the lake"
        );
        // The store itself refuses such keys too.
        assert!(store.get("../secret").await.is_err());
        assert!(store.delete("_state/../../secret").await.is_err());
    }

    #[tokio::test]
    async fn commit_publishes_and_recovery_finishes_or_discards() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::Local {
            root: root.path().to_owned(),
        };
        store
            .put(
                "_staging/r1/findings/dt=2026-11-01/r1-0001.parquet",
                b"data".to_vec(),
            )
            .await
            .unwrap();
        let journal = Journal {
            run_id: "r1".into(),
            kind: "run".into(),
            copies: vec![Copy {
                from: "_staging/r1/findings/dt=2026-11-01/r1-0001.parquet".into(),
                to: "findings/dt=2026-11-01/r1-0001.parquet".into(),
            }],
            deletes: vec![],
            checkpoints: vec![Checkpoint {
                key: "_state/guardduty/1/r.json".into(),
                body: "{}".into(),
                expected: None,
            }],
        };
        // A journal committed by a run that died right after: recovery rolls it forward.
        store
            .put_if(&journal.key(), serde_json::to_vec(&journal).unwrap(), None)
            .await
            .unwrap();
        store
            .put(
                "_staging/r2/findings/dt=2026-11-01/r2-0001.parquet",
                b"uncommitted".to_vec(),
            )
            .await
            .unwrap();
        let recovery = recover(&store).await.unwrap();
        assert_eq!(
            recovery,
            Recovery {
                rolled_forward: 1,
                discarded_runs: 1
            }
        );
        assert_eq!(
            store
                .get("findings/dt=2026-11-01/r1-0001.parquet")
                .await
                .unwrap(),
            Some(b"data".to_vec())
        );
        assert_eq!(
            store.get("_state/guardduty/1/r.json").await.unwrap(),
            Some(b"{}".to_vec())
        );
        assert!(store.list(STAGING).await.unwrap().is_empty());
        assert!(store.list(JOURNALS).await.unwrap().is_empty());
        // Applying the same journal again changes nothing and fails nothing.
        store
            .put(
                "_staging/r1/findings/dt=2026-11-01/r1-0001.parquet",
                b"data".to_vec(),
            )
            .await
            .unwrap();
        apply(&store, &journal, Phase::Run).await.unwrap();
        assert_eq!(store.list("findings/").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_checkpoint_changed_by_someone_else_is_not_overwritten() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::Local {
            root: root.path().to_owned(),
        };
        let tag = store
            .put_if("_state/guardduty/1/r.json", b"old".to_vec(), None)
            .await
            .unwrap();
        store
            .put("_state/guardduty/1/r.json", b"theirs".to_vec())
            .await
            .unwrap();
        let journal = Journal {
            run_id: "r3".into(),
            kind: "run".into(),
            checkpoints: vec![Checkpoint {
                key: "_state/guardduty/1/r.json".into(),
                body: "mine".into(),
                expected: Some(tag),
            }],
            ..Journal::default()
        };
        assert!(matches!(
            commit(&store, &journal, Phase::Run).await,
            Err(PublishError::CheckpointConflict(_))
        ));
    }
}
