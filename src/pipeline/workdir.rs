//! A run's scratch directory, `<work_dir>/guardlake-<id>`: the Parquet it encodes before
//! staging, its quarantine and spill files. A run removes its own when it ends; a run that is
//! killed (SIGKILL, a Lambda timeout, a stopped container) cannot, and the next run on the
//! host would otherwise never know. So a live run holds an exclusive lock on its directory's
//! `.lock` file, and each new run first removes the run directories whose lock is free.

use std::fs::{File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use tracing::{debug, info};

use crate::config::ValidatedConfig;
use crate::error::RunError;

/// What every scratch directory's name starts with.
const PREFIX: &str = "guardlake-";
/// The file a live run holds locked, inside its directory.
const LOCK: &str = ".lock";

/// A scratch directory for one run's files, removed when dropped.
pub struct WorkDir {
    pub path: PathBuf,
    /// The open, locked [`LOCK`] file that marks the directory live (none where the
    /// filesystem has no locks). Closed after the directory is removed.
    _lock: Option<File>,
}

impl WorkDir {
    pub fn create(config: &ValidatedConfig, run_id: &str) -> Result<WorkDir, RunError> {
        Self::create_in(&config.work_dir, run_id)
    }

    /// After removing the directories under `root` of runs that are gone.
    fn create_in(root: &Path, run_id: &str) -> Result<WorkDir, RunError> {
        let removed = sweep(root);
        if removed > 0 {
            info!(
                removed,
                work_dir = %root.display(),
                "Removed the scratch directories of runs that were killed."
            );
        }
        let dir = root.join(format!("{PREFIX}{run_id}"));
        std::fs::create_dir_all(&dir).map_err(|e| RunError::Store {
            key: dir.display().to_string(),
            message: e.to_string(),
        })?;
        let lock = hold(&dir)
            .inspect_err(|e| debug!(error = %e, "No lock on the scratch directory."))
            .ok();
        Ok(WorkDir {
            path: dir,
            _lock: lock,
        })
    }
}

impl Drop for WorkDir {
    /// Removes the directory first; the lock is released after, when the file closes.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Locks a new file and only then names it [`LOCK`]: a sweep never finds the lock file of a
/// live run unlocked.
fn hold(dir: &Path) -> io::Result<File> {
    let fresh = dir.join(format!("{LOCK}-{}", std::process::id()));
    let file = File::create(&fresh)?;
    let locked = file
        .lock()
        .and_then(|()| std::fs::rename(&fresh, dir.join(LOCK)));
    match locked {
        Ok(()) => Ok(file),
        Err(e) => {
            let _ = std::fs::remove_file(&fresh);
            Err(e)
        }
    }
}

/// Removes the scratch directories under `root` whose lock is free; returns how many. Only a
/// directory named as a run's (`guardlake-` and a run id, a UUID) is looked at; one without a
/// lock file (an older guardlake's) is left alone, as is everything else under `root`.
fn sweep(root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(is_scratch_name))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| remove_if_dead(&e.path()))
        .count()
}

/// `guardlake-<run id>`: every run id is a UUID.
fn is_scratch_name(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .is_some_and(|id| uuid::Uuid::try_parse(id).is_ok())
}

fn remove_if_dead(dir: &Path) -> bool {
    let Ok(file) = File::open(dir.join(LOCK)) else {
        return false;
    };
    match file.try_lock() {
        // Held while removing: a second sweep finds it taken.
        Ok(()) => std::fs::remove_dir_all(dir)
            .inspect_err(|e| debug!(dir = %dir.display(), error = %e, "Cannot remove a dead run's scratch directory."))
            .is_ok(),
        // Live, or a filesystem without locks.
        Err(TryLockError::WouldBlock | TryLockError::Error(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_id() -> String {
        uuid::Uuid::now_v7().to_string()
    }

    #[test]
    fn a_new_run_removes_only_the_directories_of_dead_runs() {
        let root = tempfile::tempdir().unwrap();
        let live = WorkDir::create_in(root.path(), &run_id()).unwrap();
        assert!(live.path.join(LOCK).exists());
        std::fs::write(live.path.join("a.parquet"), b"rows").unwrap();
        // A killed run: its lock file is there, and nothing holds it.
        let dead = root.path().join(format!("{PREFIX}{}", run_id()));
        std::fs::create_dir_all(dead.join("cloudtrail_events")).unwrap();
        std::fs::write(dead.join(LOCK), b"").unwrap();
        std::fs::write(dead.join("cloudtrail_events/b.parquet"), b"rows").unwrap();
        // Not ours to judge: no lock file (an older guardlake's), or not named as a run's
        // (a lake beside the work directories, say), whatever it holds.
        let unmarked = root.path().join(format!("{PREFIX}{}", run_id()));
        std::fs::create_dir_all(&unmarked).unwrap();
        let others = ["other", "guardlake-lake"].map(|name| root.path().join(name));
        for other in &others {
            std::fs::create_dir_all(other).unwrap();
            std::fs::write(other.join(LOCK), b"").unwrap();
        }

        let next = WorkDir::create_in(root.path(), &run_id()).unwrap();
        assert!(!dead.exists());
        assert!(live.path.join("a.parquet").exists());
        assert!(unmarked.exists() && others.iter().all(|o| o.exists()));
        // The one that ended normally leaves nothing, and no later run takes a live one.
        let live_dir = live.path.clone();
        drop(live);
        assert!(!live_dir.exists());
        let third = WorkDir::create_in(root.path(), &run_id()).unwrap();
        assert!(next.path.join(LOCK).exists() && third.path.join(LOCK).exists());
        // Its lock file was named only once locked: no temporary name is left.
        let names: Vec<String> = std::fs::read_dir(next.path.clone())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![LOCK.to_owned()]);
    }
}
