//! The run lock: one object, `_state/lock.json`, created with `If-None-Match: *` and held under
//! a lease that its holder renews. Of two runs started together exactly one gets it; a lock left
//! by a crashed run expires after its lease and is taken over with `If-Match`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::sink::store::{PutError, Store, StoreError, Tag};

pub const LOCK_KEY: &str = "_state/lock.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockBody {
    run_id: String,
    pid: u32,
    acquired_at_ms: i64,
    expires_at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another guardlake run ({run_id}) holds the lock on this lake until {expires_at}; it will publish, this run exits without doing anything")]
    Held { run_id: String, expires_at: String },
    #[error(
        "this run lost its lock (lease expired and another run took it); nothing more is published"
    )]
    Lost,
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// A held run lock. Renewed in the background every third of the lease.
pub struct RunLock {
    run_id: String,
    lease_ms: i64,
    tag: Mutex<Tag>,
    lost: AtomicBool,
}

fn iso(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

impl RunLock {
    fn body(&self) -> Vec<u8> {
        let now = now_ms();
        let body = LockBody {
            run_id: self.run_id.clone(),
            pid: std::process::id(),
            acquired_at_ms: now,
            expires_at_ms: now + self.lease_ms,
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// Takes the lock, or says who holds it.
    pub async fn acquire(
        store: &Store,
        run_id: &str,
        lease: Duration,
    ) -> Result<Arc<RunLock>, LockError> {
        let lock = RunLock {
            run_id: run_id.to_owned(),
            lease_ms: lease.as_millis() as i64,
            tag: Mutex::new(String::new()),
            lost: AtomicBool::new(false),
        };
        for _ in 0..5 {
            let current = store.get_tagged(LOCK_KEY).await?;
            let expected = match &current {
                None => None,
                Some((bytes, tag)) => {
                    let held: Option<LockBody> = serde_json::from_slice(bytes).ok();
                    match held {
                        Some(held) if held.expires_at_ms > now_ms() => {
                            return Err(LockError::Held {
                                run_id: held.run_id,
                                expires_at: iso(held.expires_at_ms),
                            })
                        }
                        Some(held) => {
                            warn!(expired_run = %held.run_id, "Taking over the lock of a run whose lease expired.")
                        }
                        None => warn!("Taking over an unreadable lock object."),
                    }
                    Some(tag.clone())
                }
            };
            match store.put_if(LOCK_KEY, lock.body(), expected.as_ref()).await {
                Ok(tag) => {
                    *lock.tag.lock().await = tag;
                    info!(lease_secs = lease.as_secs(), "Acquired the run lock.");
                    return Ok(Arc::new(lock));
                }
                Err(PutError::Conflict(_)) => continue, // Someone else moved first: look again.
                Err(PutError::Store(e)) => return Err(e.into()),
            }
        }
        Err(LockError::Held {
            run_id: "unknown".into(),
            expires_at: "unknown".into(),
        })
    }

    /// The lock a run took in another process (a distributed run's `commit`): refused unless
    /// the lock object still names `run_id`; the lease is then extended by a conditional
    /// write, which fails if another run took the lock meanwhile.
    pub async fn resume(
        store: &Store,
        run_id: &str,
        lease: Duration,
    ) -> Result<Arc<RunLock>, LockError> {
        let tag = Self::holder(store, run_id).await?;
        let lock = RunLock {
            run_id: run_id.to_owned(),
            lease_ms: lease.as_millis() as i64,
            tag: Mutex::new(tag),
            lost: AtomicBool::new(false),
        };
        lock.renew(store).await?;
        Ok(Arc::new(lock))
    }

    /// The lock object's version tag if it names `run_id` (a distributed run's shards check
    /// this before they start), else [`LockError::Lost`].
    pub async fn holder(store: &Store, run_id: &str) -> Result<Tag, LockError> {
        let Some((bytes, tag)) = store.get_tagged(LOCK_KEY).await? else {
            return Err(LockError::Lost);
        };
        let held: Option<LockBody> = serde_json::from_slice(&bytes).ok();
        match held {
            Some(held) if held.run_id == run_id => Ok(tag),
            _ => Err(LockError::Lost),
        }
    }

    /// Extends the lease; fails if another run took the lock meanwhile.
    pub async fn renew(&self, store: &Store) -> Result<(), LockError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(LockError::Lost);
        }
        let mut tag = self.tag.lock().await;
        match store.put_if(LOCK_KEY, self.body(), Some(&tag)).await {
            Ok(new_tag) => {
                *tag = new_tag;
                Ok(())
            }
            Err(PutError::Conflict(_)) => {
                self.lost.store(true, Ordering::SeqCst);
                Err(LockError::Lost)
            }
            Err(PutError::Store(e)) => Err(e.into()),
        }
    }

    /// Renews the lease every third of it until the returned handle is aborted.
    pub fn keep_alive(self: &Arc<Self>, store: Arc<Store>) -> tokio::task::JoinHandle<()> {
        let lock = self.clone();
        tokio::spawn(async move {
            let period = Duration::from_millis((lock.lease_ms / 3).max(100) as u64);
            loop {
                tokio::time::sleep(period).await;
                if let Err(e) = lock.renew(&store).await {
                    warn!(error = %e, "Could not renew the run lock.");
                    if matches!(e, LockError::Lost) {
                        return;
                    }
                }
            }
        })
    }

    /// Deletes the lock if it is still ours.
    pub async fn release(&self, store: &Store) -> Result<(), StoreError> {
        if let Some((bytes, _)) = store.get_tagged(LOCK_KEY).await? {
            let held: Option<LockBody> = serde_json::from_slice(&bytes).ok();
            if held.is_some_and(|h| h.run_id == self.run_id) {
                store.delete(LOCK_KEY).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_and_expired_leases_are_taken_over() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::Local {
            root: root.path().to_owned(),
        };
        let first = RunLock::acquire(&store, "first", Duration::from_millis(300))
            .await
            .unwrap();
        let second = RunLock::acquire(&store, "second", Duration::from_secs(60)).await;
        assert!(matches!(second, Err(LockError::Held { ref run_id, .. }) if run_id == "first"));
        first.renew(&store).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let third = RunLock::acquire(&store, "third", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(
            matches!(first.renew(&store).await, Err(LockError::Lost)),
            "the expired holder learns it lost the lock"
        );
        first.release(&store).await.unwrap();
        assert!(
            store.exists(LOCK_KEY).await.unwrap(),
            "releasing a lost lock leaves the new holder's"
        );
        third.release(&store).await.unwrap();
        assert!(!store.exists(LOCK_KEY).await.unwrap());
    }
}
