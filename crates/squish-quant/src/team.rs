//! A fork-join team for the many small parallel regions of a decode step (a matmul or an
//! attention of a few µs each, hundreds per token). rayon's idle workers go to sleep within
//! microseconds and each region then paid a futex wake-up (in a VM, an IPI): a profile of a
//! batched step showed ~18% of the CPU in sleeping and waking. The team's helpers spin
//! for `SPIN` after each region, so the next one finds them awake, and park after that.
//!
//! One region runs at a time; a call made while the team is busy (another thread, or a
//! task of a region) runs on rayon instead, so callers never wait for each other.

use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle helper keeps checking for work before it parks.
const SPIN: Duration = Duration::from_micros(300);

/// Runs `f` on every item, the calling thread and the team's helpers taking items one at a
/// time; returns when all are done.
pub fn for_each_mut<T: Send>(items: &mut [T], f: impl Fn(&mut T) + Sync) {
    let n = items.len();
    if n <= 1 {
        items.iter_mut().for_each(f);
        return;
    }
    let team = team();
    let Some(_lock) = (!team.helpers.is_empty()).then(|| team.busy.try_lock().ok()).flatten() else {
        items.par_iter_mut().for_each(&f);
        return;
    };
    let base = Shared(items.as_mut_ptr());
    // SAFETY: each index is claimed exactly once (`claim`), so the &mut are disjoint, and
    // all tasks end before this function returns (`completed`).
    let task = move |i: usize| f(unsafe { &mut *base.at(i) });
    team.run(n, &task);
}

/// A pointer to the items that tasks share; each task touches only its own index.
struct Shared<T>(*mut T);
impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Shared<T> {}
// SAFETY: see `for_each_mut`: disjoint indices, all accesses end before the items' borrow does.
unsafe impl<T: Send> Send for Shared<T> {}
unsafe impl<T: Send> Sync for Shared<T> {}
impl<T> Shared<T> {
    /// Taking self (not the field) makes closures capture the whole Send + Sync wrapper.
    fn at(self, i: usize) -> *mut T {
        // SAFETY: callers pass i < the slice's length.
        unsafe { self.0.add(i) }
    }
}

type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Team {
    helpers: Vec<Helper>,
    /// Held by the thread whose region is running.
    busy: Mutex<()>,
    /// (epoch << 32) | next unclaimed task of the current region.
    state: AtomicU64,
    tasks: AtomicUsize,
    completed: AtomicUsize,
    /// The current region's `Job`, behind a thin pointer; read only after claiming a task.
    job: AtomicPtr<()>,
    /// A helper's task of the current region panicked.
    panicked: AtomicBool,
}

struct Helper {
    thread: Thread,
    parked: AtomicBool,
}

fn team() -> &'static Team {
    static TEAM: OnceLock<&'static Team> = OnceLock::new();
    TEAM.get_or_init(|| {
        // One helper per thread of the compute pool beside the caller.
        let count = rayon::current_num_threads().saturating_sub(1);
        let team: &'static mut Team = Box::leak(Box::new(Team {
            helpers: Vec::new(),
            busy: Mutex::new(()),
            state: AtomicU64::new(0),
            tasks: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            panicked: AtomicBool::new(false),
        }));
        // The helpers' first `team()` blocks until this initialisation returns.
        team.helpers = (0..count)
            .map(|i| {
                let handle = thread::Builder::new()
                    .name(format!("squish-team-{i}"))
                    .spawn(move || helper_loop(i))
                    .expect("spawn a team thread");
                Helper { thread: handle.thread().clone(), parked: AtomicBool::new(false) }
            })
            .collect();
        &*team
    })
}

impl Team {
    fn run(&self, n: usize, job: Job<'_>) {
        let epoch = (self.state.load(Relaxed) >> 32) + 1;
        self.tasks.store(n, Relaxed);
        self.completed.store(0, Relaxed);
        self.job.store(&job as *const Job<'_> as *mut (), Relaxed);
        self.state.store(epoch << 32, SeqCst);
        for h in &self.helpers {
            if h.parked.swap(false, SeqCst) {
                h.thread.unpark();
            }
        }
        self.panicked.store(false, Relaxed);
        let mut mine = 0;
        // A panicking task must not unwind past the helpers still using `job` (it lives in
        // this frame): every task is waited for, then the panic goes on.
        let mine_result = catch_unwind(AssertUnwindSafe(|| {
            while let Some(i) = self.claim(epoch) {
                mine += 1;
                job(i);
            }
        }));
        self.completed.fetch_add(mine, AcqRel);
        let mut spins = 0u32;
        while self.completed.load(Acquire) < n {
            relax(&mut spins);
        }
        if let Err(panic) = mine_result {
            resume_unwind(panic);
        }
        assert!(!self.panicked.load(Acquire), "a task of a parallel region panicked on a team thread");
    }

    /// The next task of region `epoch`, if one is left.
    fn claim(&self, epoch: u64) -> Option<usize> {
        let n = self.tasks.load(Acquire) as u64;
        let mut s = self.state.load(Acquire);
        loop {
            if s >> 32 != epoch || (s & 0xFFFF_FFFF) >= n {
                return None;
            }
            match self.state.compare_exchange_weak(s, s + 1, AcqRel, Acquire) {
                Ok(_) => return Some((s & 0xFFFF_FFFF) as usize),
                Err(now) => s = now,
            }
        }
    }
}

/// One round of waiting: a CPU pause, and every 64th round a yield, so that a thread this
/// one waits for (preempted by the HTTP side or a client on a machine with few cores) gets
/// the core back instead of watching it spin.
fn relax(spins: &mut u32) {
    *spins = spins.wrapping_add(1);
    if *spins % 64 == 0 {
        thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

fn helper_loop(index: usize) {
    let team = team();
    let me = &team.helpers[index];
    let mut seen = 0u64;
    loop {
        let (mut idle_since, mut spins) = (Instant::now(), 0u32);
        let epoch = loop {
            let e = team.state.load(Acquire) >> 32;
            if e != seen {
                break e;
            }
            // The clock is read once per 64 rounds: read every round, it was a tenth of a
            // batched step's samples, taken from the core the caller's serial work runs on.
            if spins % 64 != 63 || idle_since.elapsed() < SPIN {
                relax(&mut spins);
                continue;
            }
            me.parked.store(true, SeqCst);
            if team.state.load(SeqCst) >> 32 == seen {
                thread::park();
            }
            me.parked.store(false, SeqCst);
            idle_since = Instant::now();
        };
        seen = epoch;
        let mut mine = 0;
        while let Some(i) = team.claim(epoch) {
            // SAFETY: a claimed task of this epoch means the caller is still in `run`,
            // keeping the job it published for this epoch alive until `completed` counts it.
            let job = unsafe { *(team.job.load(Acquire) as *const Job<'_>) };
            mine += 1;
            // Counted as done either way, so the caller never waits forever; it re-raises.
            if catch_unwind(AssertUnwindSafe(|| job(i))).is_err() {
                team.panicked.store(true, Release);
            }
        }
        if mine > 0 {
            team.completed.fetch_add(mine, AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that panics, on whichever thread, makes the caller panic after every task has
    /// ended, and the team still works afterwards.
    #[test]
    fn a_panicking_task_reaches_the_caller() {
        for victim in [0, 7] {
            let mut v: Vec<usize> = (0..8).collect();
            let r = catch_unwind(AssertUnwindSafe(|| {
                for_each_mut(&mut v, |x| {
                    if *x == victim {
                        panic!("task {victim}");
                    }
                })
            }));
            assert!(r.is_err());
        }
        let mut v = vec![1usize; 16];
        for_each_mut(&mut v, |x| *x += 1);
        assert!(v.iter().all(|&x| x == 2));
    }

    /// Every item is visited exactly once, whether the team or rayon runs the region, and
    /// concurrent callers (which fall back to rayon) do not disturb each other.
    #[test]
    fn every_item_once_from_concurrent_callers() {
        let run = |seed: usize| {
            for round in 0..200 {
                let mut v: Vec<usize> = (0..(round % 37) + 2).collect();
                for_each_mut(&mut v, |x| *x = *x * 3 + seed);
                assert!(v.iter().enumerate().all(|(i, &x)| x == i * 3 + seed));
            }
        };
        thread::scope(|s| {
            for seed in 0..4 {
                s.spawn(move || run(seed));
            }
        });
    }
}
