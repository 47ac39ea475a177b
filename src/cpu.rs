//! CPU work and the async runtime: how many threads a process uses (`--threads`, default every
//! core), and the two ways CPU-bound work leaves the runtime's workers free for I/O. [`run`]
//! moves a job to one of `threads` CPU threads of the process; [`in_place`] runs a short burst
//! on the current worker after handing its other tasks to the rest.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};

static THREADS: OnceLock<usize> = OnceLock::new();

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

/// A job of the CPU threads: it sends its own result (or its panic) back.
type Job = Box<dyn FnOnce() + Send>;

/// The process's CPU threads ([`threads`] of them, `guardlake-cpu-K`), started on first use.
/// A thread that finishes a job takes the next queued one at once: no async task has to be
/// woken, no permit passed on and no blocking thread woken between two jobs. Through tokio's
/// blocking pool (a semaphore permit per job) the 10x org-trail run at 2 threads left the
/// cores 20% idle between objects when the readers also encoded (`perf sched`, 1 s buckets).
fn pool() -> &'static Sender<Job> {
    static POOL: OnceLock<Sender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        // Unbounded: callers bound their own jobs (a reader has a few objects ahead).
        let (queue, jobs) = std::sync::mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        for k in 0..threads() {
            let jobs = jobs.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("guardlake-cpu-{k}"))
                .spawn(move || loop {
                    let next = match jobs.lock() {
                        Ok(jobs) => jobs.recv(),
                        Err(_) => return,
                    };
                    match next {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            // Without any thread a job would never run: fail loudly, as thread::spawn does.
            if let Err(e) = spawned {
                panic!("starting CPU thread {k}: {e}");
            }
        }
        queue
    })
}

/// Runs `job` on one of the process's CPU threads, at most [`threads`] jobs at once; a panic
/// in `job` is resumed here.
pub async fn run<T, F>(job: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    submit(job).await
}

/// Queues `job` for the CPU threads now, and returns its result to come: [`run`] for a caller
/// that keeps several jobs ahead, which would otherwise spawn a task per job only to start it
/// (on the 10x org-trail corpus, one more thread wake-up per object).
pub fn submit<T, F>(job: F) -> impl std::future::Future<Output = T> + Send + 'static
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (done, result) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = done.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)));
    });
    // The CPU threads never stop; were the queue gone, the job runs here instead.
    if let Err(refused) = pool().send(job) {
        (refused.0)();
    }
    async move {
        match result.await {
            Ok(Ok(done)) => done,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => unreachable!("a CPU job always sends its result or its panic"),
        }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::{run, threads};

    /// Jobs run on the CPU threads, never more at once than [`threads`], and every
    /// result comes back to its own caller.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_run_on_the_cpu_threads_at_most_threads_at_once() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs = (0..12).map(|i| {
            let (running, most) = (running.clone(), most.clone());
            run(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
                (i, std::thread::current().name().map(str::to_owned))
            })
        });
        let done = futures::future::join_all(jobs).await;
        for (i, (back, name)) in done.into_iter().enumerate() {
            assert_eq!(back, i);
            assert!(name.is_some_and(|n| n.starts_with("guardlake-cpu-")));
        }
        let most = most.load(Ordering::SeqCst);
        assert_eq!(most, threads().min(12), "jobs at once");
    }

    /// A job's panic reaches the task that awaited it, and the CPU threads go on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_job_panics_its_caller_and_the_threads_go_on() {
        let caller = tokio::spawn(run(|| -> usize { panic!("job failed") }));
        let error = caller.await.expect_err("the caller panicked");
        assert!(error.is_panic());
        for _ in 0..2 * threads() {
            assert_eq!(run(|| 7).await, 7);
        }
    }
}
