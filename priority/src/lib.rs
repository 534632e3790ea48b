//! Scheduling priority of chatd's background threads, owned here and nowhere else.
//!
//! The read side (the projector's writer, the search indexer) runs *nicer* than the live path
//! (WebSocket and SSE tasks, room actors, the log writer): on a busy node its bursts of work
//! then wait for the CPU that sending and delivery leave over, instead of delaying them. It
//! catches up in larger batches, which cost less per event.

/// Makes the calling thread (and the threads it starts from now on) `nice` steps nicer, at
/// most 19. On Linux a thread's nice value is its own and new threads inherit it; elsewhere
/// this logs that the thread keeps normal priority. `what` names the thread in the log.
pub fn lower_current_thread(nice: i32, what: &str) {
    if nice <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let me = Some(rustix::thread::gettid());
        let result = getpriority_process(me)
            .and_then(|current| setpriority_process(me, (current + nice).min(19)));
        if let Err(e) = result {
            tracing::warn!(error = %e, nice, "cannot lower the priority of the {what}");
        }
    }
    #[cfg(not(target_os = "linux"))]
    tracing::info!(
        nice,
        "per-thread priority is not supported here; the {what} runs at normal priority"
    );
}

/// Puts the calling thread (and the threads it starts from now on) under Linux's `SCHED_IDLE`
/// policy: it runs only on a core no other thread of the machine wants, and a thread of normal
/// policy that wakes up takes the core from it at once. A nice value only shares the core in
/// proportion, and the scheduler lets a nicer thread finish its slice (milliseconds) before a
/// waking one runs: bursts of background work (Tantivy's merges) then show in the live path's
/// tail. Elsewhere, or if the kernel refuses, this logs it and the thread keeps its priority.
/// `what` names the thread in the log.
pub fn idle_current_thread(what: &str) {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
            set_thread_priority_and_policy, thread_native_id,
        };
        // The priority is the nice value, which SCHED_IDLE ignores; the library wants one.
        let result = set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        );
        if let Err(e) = result {
            tracing::warn!(error = ?e, "cannot put the {what} under SCHED_IDLE");
        }
    }
    #[cfg(not(target_os = "linux"))]
    tracing::info!("SCHED_IDLE is Linux-only; the {what} runs at normal priority");
}

/// The scheduling policy of each thread of process `pid` whose name starts with `prefix`, as
/// the kernel numbers them (0 normal, 3 batch, 5 idle), for tests and diagnostics (Linux).
#[cfg(target_os = "linux")]
pub fn policy_of_threads(pid: u32, prefix: &str) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        // Field 41 of `stat`; the fields after the `(comm)` start at 3.
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let policy: Option<u32> = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(41 - 3))
            .and_then(|p| p.parse().ok());
        out.extend(policy);
    }
    out
}

/// The kernel's number for `SCHED_IDLE` (see [`policy_of_threads`]).
pub const SCHED_IDLE: u32 = 5;

/// The nice value of the calling thread (Linux), for tests and diagnostics.
#[cfg(target_os = "linux")]
pub fn current_thread_nice() -> Option<i32> {
    rustix::process::getpriority_process(Some(rustix::thread::gettid())).ok()
}

/// Nice values of the threads of process `pid` whose name starts with `prefix` (names as the
/// kernel keeps them: 15 bytes at most), for tests and diagnostics (Linux).
#[cfg(target_os = "linux")]
pub fn nice_of_threads(pid: u32, prefix: &str) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let tid = task.file_name().to_str().and_then(|t| t.parse().ok());
        let tid = tid.and_then(rustix::process::Pid::from_raw);
        out.extend(tid.and_then(|tid| rustix::process::getpriority_process(Some(tid)).ok()));
    }
    out
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_gets_nicer_by_the_increment_and_its_children_inherit_it() {
        std::thread::spawn(|| {
            let own = current_thread_nice().unwrap();
            lower_current_thread(3, "test thread");
            assert_eq!(current_thread_nice(), Some((own + 3).min(19)));
            let child = std::thread::Builder::new()
                .name("nicer-child".into())
                .spawn(|| nice_of_threads(std::process::id(), "nicer-child"))
                .unwrap()
                .join()
                .unwrap();
            assert_eq!(child, [(own + 3).min(19)]);
            // Never beyond 19.
            lower_current_thread(40, "test thread");
            assert_eq!(current_thread_nice(), Some(19));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn an_idle_thread_and_its_children_run_under_sched_idle() {
        let child = std::thread::spawn(|| {
            idle_current_thread("test thread");
            std::thread::Builder::new()
                .name("idle-child".into())
                .spawn(|| policy_of_threads(std::process::id(), "idle-child"))
                .unwrap()
                .join()
                .unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(child, [SCHED_IDLE]);
        // Only that thread's: one started by the test's own thread keeps the normal policy.
        let sibling = std::thread::Builder::new()
            .name("normal-sibling".into())
            .spawn(|| policy_of_threads(std::process::id(), "normal-sibling"))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(sibling, [0]);
    }

    #[test]
    fn zero_leaves_the_thread_as_it_is() {
        std::thread::spawn(|| {
            let own = current_thread_nice().unwrap();
            lower_current_thread(0, "test thread");
            assert_eq!(current_thread_nice(), Some(own));
        })
        .join()
        .unwrap();
    }
}
