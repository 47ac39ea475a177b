//! CPU work and the async runtime: how many threads a process uses (`--threads`, default every
//! core), and the two ways CPU-bound work leaves the runtime's workers free for I/O. [`run`]
//! moves a job to a blocking thread, at most `threads` such jobs at once; [`in_place`] runs a
//! short burst on the current worker after handing its other tasks to the rest.

use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

static THREADS: OnceLock<usize> = OnceLock::new();
static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();

/// Sets the thread count once, before the runtime starts (later calls are ignored).
pub fn set_threads(threads: usize) {
    let _ = THREADS.set(threads.max(1));
}

/// The threads this process uses: `--threads`, else the cores it may run on.
pub fn threads() -> usize {
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(std::num::NonZeroUsize::get)
            .unwrap_or(1)
    })
}

/// Runs `job` on a blocking thread, at most [`threads`] jobs at once across the process.
pub async fn run<T, F>(job: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let permits = PERMITS.get_or_init(|| Arc::new(Semaphore::new(threads())));
    // The semaphore is never closed, so acquiring fails only if it were: then run unbounded.
    let permit = permits.clone().acquire_owned().await.ok();
    let handle = tokio::task::spawn_blocking(move || {
        let done = job();
        drop(permit);
        done
    });
    match handle.await {
        Ok(done) => done,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Runs `burst` on this thread; on a multi-thread runtime its other tasks move to other
/// workers meanwhile (a current-thread runtime, as in unit tests, just runs it).
pub fn in_place<T>(burst: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(burst)
        }
        _ => burst(),
    }
}
