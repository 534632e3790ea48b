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
