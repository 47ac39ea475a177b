//! State beside the lake, under `<output>/_state/` (invisible to Athena: leading `_`):
//! checkpoints (a watermark per source, account and region), the run lock ([`lock`]) and the
//! publish journal ([`journal`]) that make a run exactly-once even when it is killed.
//!
//! A run pulls `[watermark - overlap, run start)`; the versions already published inside the
//! overlap are remembered in the checkpoint, so they are skipped instead of written twice.
//! Checkpoints advance only through a committed journal, after the data they cover.

pub mod journal;
pub mod lock;

use std::collections::HashSet;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::sink::store::{Store, StoreError, Tag};

static CRASH_AT: OnceLock<String> = OnceLock::new();

/// Test-only: names the point at which the process kills itself with SIGKILL (see
/// `GUARDLAKE_CRASH_AT` in the README). Set once, by `main`.
pub fn set_crash_point(name: String) {
    let _ = CRASH_AT.set(name);
}

/// Which publish a journal step belongs to; it prefixes the step's crash point name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A run's own publish: `after_copy`.
    Run,
    /// Rolling forward a journal an earlier run committed: `recovery_after_copy`.
    Recovery,
    /// A compaction's publish: `compact_after_copy`.
    Compact,
}

impl Phase {
    const fn prefix(self) -> &'static str {
        match self {
            Self::Run => "",
            Self::Recovery => "recovery_",
            Self::Compact => "compact_",
        }
    }
}

/// A step of applying a journal (`journal::commit` / `journal::apply`), in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    AfterJournal,
    MidCopy,
    AfterCopy,
    MidDelete,
    BeforeCheckpoint,
    MidCheckpoint,
    AfterCheckpoint,
    AfterJournalDelete,
    MidStagingCleanup,
    AfterStagingCleanup,
}

impl Step {
    const ALL: [Step; 10] = [
        Self::AfterJournal,
        Self::MidCopy,
        Self::AfterCopy,
        Self::MidDelete,
        Self::BeforeCheckpoint,
        Self::MidCheckpoint,
        Self::AfterCheckpoint,
        Self::AfterJournalDelete,
        Self::MidStagingCleanup,
        Self::AfterStagingCleanup,
    ];

    const fn name(self) -> &'static str {
        match self {
            Self::AfterJournal => "after_journal",
            Self::MidCopy => "mid_copy",
            Self::AfterCopy => "after_copy",
            Self::MidDelete => "mid_delete",
            Self::BeforeCheckpoint => "before_checkpoint",
            Self::MidCheckpoint => "mid_checkpoint",
            Self::AfterCheckpoint => "after_checkpoint",
            Self::AfterJournalDelete => "after_journal_delete",
            Self::MidStagingCleanup => "mid_staging_cleanup",
            Self::AfterStagingCleanup => "after_staging_cleanup",
        }
    }

    /// Whether a publish of `phase` passes this step: a run's journal deletes nothing, a
    /// recovery starts after the journal exists, a compaction moves no checkpoint.
    const fn reached_in(self, phase: Phase) -> bool {
        !matches!(
            (phase, self),
            (Phase::Run, Self::MidDelete)
                | (Phase::Recovery, Self::AfterJournal)
                | (Phase::Compact, Self::MidCheckpoint)
        )
    }
}

/// A point where a crash test may kill the process (`GUARDLAKE_CRASH_AT=<name>`), in the order
/// a run passes them. `tests/py/test_exactly_once.py` kills at each of [`CrashPoint::all`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    AfterLock,
    AfterRecovery,
    AfterDiscovery,
    MidPage,
    AfterCollect,
    AfterEncode,
    AfterCloudtrail,
    MidStageUpload,
    /// Between two parts of a multipart upload (S3, files over the part size).
    MidMultipart,
    AfterStageUpload,
    BeforeJournal,
    Journal(Phase, Step),
    BeforeLockRelease,
    CompactAfterStage,
}

impl CrashPoint {
    pub fn name(self) -> String {
        let fixed = match self {
            Self::AfterLock => "after_lock",
            Self::AfterRecovery => "after_recovery",
            Self::AfterDiscovery => "after_discovery",
            Self::MidPage => "mid_page",
            Self::AfterCollect => "after_collect",
            Self::AfterEncode => "after_encode",
            Self::AfterCloudtrail => "after_cloudtrail",
            Self::MidStageUpload => "mid_stage_upload",
            Self::MidMultipart => "mid_multipart",
            Self::AfterStageUpload => "after_stage_upload",
            Self::BeforeJournal => "before_journal",
            Self::Journal(phase, step) => return format!("{}{}", phase.prefix(), step.name()),
            Self::BeforeLockRelease => "before_lock_release",
            Self::CompactAfterStage => "compact_after_stage",
        };
        fixed.to_owned()
    }

    /// Every point a run, a recovery or a compaction can reach.
    pub fn all() -> Vec<CrashPoint> {
        let mut points = vec![
            Self::AfterLock,
            Self::AfterRecovery,
            Self::AfterDiscovery,
            Self::MidPage,
            Self::AfterCollect,
            Self::AfterEncode,
            Self::AfterCloudtrail,
            Self::MidStageUpload,
            Self::MidMultipart,
            Self::AfterStageUpload,
            Self::BeforeJournal,
            Self::BeforeLockRelease,
            Self::CompactAfterStage,
        ];
        for phase in [Phase::Run, Phase::Recovery, Phase::Compact] {
            points.extend(
                Step::ALL
                    .into_iter()
                    .filter(|step| step.reached_in(phase))
                    .map(|step| Self::Journal(phase, step)),
            );
        }
        points
    }
}

/// Kills the process with SIGKILL when `point` is the configured crash point: a crash test
/// hook that costs one comparison when unset.
pub fn crash_point(point: CrashPoint) {
    let Some(at) = CRASH_AT.get() else {
        return;
    };
    let name = point.name();
    if *at == name {
        eprintln!("GUARDLAKE_CRASH_AT={name}: killing the process");
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// What a target's last successful run published.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watermark {
    /// Everything with updatedAt before this (epoch ms) has been published.
    pub watermark_ms: i64,
    /// (finding id, updatedAt ms) of versions published with updatedAt inside the overlap.
    pub published: Vec<(String, i64)>,
}

impl Watermark {
    /// The versions to skip on the next pull.
    pub fn published_set(&self) -> HashSet<(String, i64)> {
        self.published.iter().cloned().collect()
    }

    /// The next watermark after a complete pull up to `until_ms`: keeps only the versions that
    /// the next run's overlap window can return again.
    pub fn advance(
        &self,
        until_ms: i64,
        overlap_ms: i64,
        new_versions: impl IntoIterator<Item = (String, i64)>,
    ) -> Watermark {
        let keep_from = until_ms - overlap_ms;
        let mut published: Vec<(String, i64)> = self
            .published
            .iter()
            .cloned()
            .chain(new_versions)
            .filter(|(_, updated)| *updated >= keep_from)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        published.sort();
        Watermark {
            watermark_ms: until_ms.max(self.watermark_ms),
            published,
        }
    }
}

impl Watermark {
    /// The checkpoint of a target that failed partway: the watermark stays where this run
    /// started (`start_ms + overlap_ms`, so the next run pulls the same window again), and the
    /// versions this run did publish are remembered, so the next run skips them instead of
    /// writing them twice.
    pub fn hold(
        &self,
        start_ms: i64,
        overlap_ms: i64,
        published_now: impl IntoIterator<Item = (String, i64)>,
    ) -> Watermark {
        let mut published: Vec<(String, i64)> = self
            .published
            .iter()
            .cloned()
            .chain(published_now)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        published.sort();
        Watermark {
            watermark_ms: start_ms + overlap_ms,
            published,
        }
    }
}

/// Object key of a target's state.
pub fn key(source: &str, account_id: &str, region: &str) -> String {
    format!("_state/{source}/{account_id}/{region}.json")
}

/// A target's checkpoint and its version tag (for the conditional write that advances it).
pub async fn load(
    store: &Store,
    source: &str,
    account_id: &str,
    region: &str,
) -> Result<Option<(Watermark, Tag)>, StoreError> {
    let key = key(source, account_id, region);
    match store.get_tagged(&key).await? {
        None => Ok(None),
        Some((bytes, tag)) => serde_json::from_slice(&bytes)
            .map(|mark| Some((mark, tag)))
            .map_err(|e| StoreError::new(key, format!("checkpoint is not valid JSON: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_target_keeps_its_window_and_remembers_what_it_published() {
        let old = Watermark {
            watermark_ms: 10_000,
            published: vec![("a".into(), 9_500)],
        };
        let held = old.hold(
            9_000,
            1_000,
            vec![("b".into(), 3_000), ("c".into(), 12_000)],
        );
        assert_eq!(
            held.watermark_ms, 10_000,
            "the next run pulls the same window"
        );
        assert_eq!(
            held.published,
            vec![
                ("a".into(), 9_500),
                ("b".into(), 3_000),
                ("c".into(), 12_000)
            ]
        );
        // A first run that failed: the next one starts where it started.
        let first = Watermark::default().hold(5_000, 1_000, vec![("d".into(), 5_500)]);
        assert_eq!(first.watermark_ms - 1_000, 5_000);
        // The next complete pull forgets what its overlap cannot return again.
        let next = held.advance(20_000, 1_000, Vec::new());
        assert!(next.published.is_empty());
    }

    #[test]
    fn advance_keeps_only_versions_inside_the_next_overlap() {
        let first = Watermark::default().advance(
            10_000,
            1_000,
            vec![("a".into(), 8_000), ("b".into(), 9_500)],
        );
        assert_eq!(first.watermark_ms, 10_000);
        assert_eq!(first.published, vec![("b".to_owned(), 9_500)]);
        let second = first.advance(20_000, 1_000, vec![("c".into(), 19_999)]);
        assert_eq!(second.published, vec![("c".to_owned(), 19_999)]);
        assert!(second.published_set().contains(&("c".to_owned(), 19_999)));
    }
}

#[cfg(test)]
mod crash_point_tests {
    use super::*;

    /// The names in the `*_POINTS = [...]` and `*_SEQUENCES = [...]` lists of the crash tests.
    fn names_the_crash_tests_kill_at() -> std::collections::BTreeSet<String> {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/test_exactly_once.py");
        let text = std::fs::read_to_string(path).unwrap();
        let mut names = std::collections::BTreeSet::new();
        let mut depth = 0usize;
        for line in text.lines() {
            let starts = line
                .split_once(" = [")
                .is_some_and(|(name, _)| name.ends_with("_POINTS") || name.ends_with("_SEQUENCES"))
                && !line.contains(" for ");
            if depth == 0 && !starts {
                continue;
            }
            names.extend(line.split('"').skip(1).step_by(2).map(str::to_owned));
            depth = (depth + line.matches('[').count()).saturating_sub(line.matches(']').count());
        }
        names
    }

    #[test]
    fn the_crash_tests_kill_at_exactly_every_point() {
        let all: std::collections::BTreeSet<String> = CrashPoint::all()
            .into_iter()
            .map(CrashPoint::name)
            .collect();
        assert_eq!(all.len(), CrashPoint::all().len(), "names are unique");
        assert_eq!(names_the_crash_tests_kill_at(), all);
    }
}
