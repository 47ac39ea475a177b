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

/// Caps glibc's malloc at two arenas per thread of [`threads`] (its default is eight per core):
/// call once, before the runtime or any other thread starts. Rows decoded on one thread are
/// freed on another, and each arena keeps what was freed in it; with fewer arenas less is kept.
/// On the 10x org-trail corpus at 2 threads, with [`give_back_memory`], four arenas instead of
/// glibc's default took the peak from 228 to 197 MiB (`MALLOC_ARENA_MAX`, measured by hand).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let arenas = i32::try_from(threads().saturating_mul(2)).unwrap_or(i32::MAX);
        // SAFETY: mallopt only sets an allocator parameter; it runs before other threads start.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Resident memory under which freed memory is left to the allocator.
const KEEP_RESIDENT_BYTES: u64 = 160 << 20;
/// Growth over the resident memory the last give-back left before the next one.
const REGROW_BYTES: u64 = 64 << 20;

/// Returns the allocator's free memory to the system (glibc's `malloc_trim`) once the process
/// holds more than [`KEEP_RESIDENT_BYTES`] and has grown [`REGROW_BYTES`] since the last time; a
/// writer calls it after each buffer it encoded. Rows are allocated on the threads that decode
/// and freed on the ones that encode, and glibc otherwise keeps what each thread's arena freed
/// resident: the 10x org-trail bench at 2 threads held about twice its live heap. Trimming
/// after every buffer costs more (the pages given back are faulted in again), hence the bar.
/// Elsewhere (musl, other systems) it does nothing.
pub fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::atomic::{AtomicU64, Ordering};
        static LEFT: AtomicU64 = AtomicU64::new(0);
        let Some(resident) = status_bytes("VmRSS:") else {
            return;
        };
        let left = LEFT.load(Ordering::Relaxed);
        if resident < KEEP_RESIDENT_BYTES || resident < left.saturating_add(REGROW_BYTES) {
            return;
        }
        // SAFETY: malloc_trim takes each arena's lock itself and only releases free pages.
        unsafe {
            libc::malloc_trim(0);
        }
        LEFT.store(
            status_bytes("VmRSS:").unwrap_or(resident),
            Ordering::Relaxed,
        );
    }
}

/// A memory figure of this process from `/proc/self/status` (`field` is e.g. `VmRSS:` for the
/// resident memory now, `VmHWM:` for its peak), in bytes; `None` where there is no procfs.
pub fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
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
