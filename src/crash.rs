//! Crash points: where a crash test may kill the process (`GUARDLAKE_CRASH_AT=<name>`, see the
//! README), so the exactly-once protocol is proven by SIGKILL at every step. Depends on nothing
//! else in the crate: the store, the journal and the pipeline all call [`crash_point`].

use std::sync::OnceLock;

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
    /// After the commit, before any alert is sent (runs with an alerts bus only).
    BeforeAlerts,
    /// After the first PutEvents call of an outbox.
    MidAlerts,
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
            Self::BeforeAlerts => "before_alerts",
            Self::MidAlerts => "mid_alerts",
        };
        fixed.to_owned()
    }

    /// The points of alert delivery (killed by `tests/py/test_alerts.py`).
    pub fn alerts() -> Vec<CrashPoint> {
        vec![Self::BeforeAlerts, Self::MidAlerts]
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
