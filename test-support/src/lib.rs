//! Dev-only helpers the test crates share (a dev-dependency, never built into chatd).
//!
//! - [`skip!`]: a check that cannot run here (a tool not installed, a live service not
//!   configured, a kernel feature not permitted) says so where a reader sees it, never passing
//!   silently. It prints `SKIPPED <crate> <test>: <reason>` straight to the terminal (past
//!   libtest's output capture) and appends the same line to `target/skipped-checks.txt`, which
//!   `scripts/test` empties at its start and summarises at its end.
//! - [`inherited_settings`]: the variables of the developer's environment that would configure
//!   `chatd` (`CHAT_*`, `OTEL_*`, `RUST_LOG`), for a test to remove from a child process before
//!   setting what it wants.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

/// Records that a check could not run, and why: `skip!("caddy is not installed")`. The caller
/// then returns (or goes on without that check).
#[macro_export]
macro_rules! skip {
    ($($reason:tt)+) => {
        $crate::record_skip(env!("CARGO_PKG_NAME"), module_path!(), &format!($($reason)+))
    };
}

/// The file skipped checks are appended to: `skipped-checks.txt` in cargo's target directory
/// (found from the running test binary, which lives under it), else in the temp directory.
pub fn skip_record() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|dir| dir.join("CACHEDIR.TAG").is_file())
                .map(|target| target.join("skipped-checks.txt"))
        })
        .unwrap_or_else(|| std::env::temp_dir().join("chatd-skipped-checks.txt"))
}

/// What [`skip!`] expands to. The test is named by its thread (libtest names each test's
/// thread after it), else by the module the skip is written in.
pub fn record_skip(package: &str, module: &str, reason: &str) {
    let thread = std::thread::current();
    let test = match thread.name() {
        Some(name) if name != "main" && !name.starts_with("tokio-") => name.to_owned(),
        _ => module
            .split_once("::")
            .map_or(module, |(_, m)| m)
            .to_owned(),
    };
    let line = format!("SKIPPED {package} {test}: {}", reason.replace('\n', " "));
    // Straight to the terminal: `eprintln!` would be captured and shown only on failure.
    let _ = writeln!(std::io::stderr(), "{line}");
    let path = skip_record();
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        // One write of one short line: concurrent test processes do not interleave.
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = appended {
        let _ = writeln!(
            std::io::stderr(),
            "(could not record it in {}: {e})",
            path.display()
        );
    }
}

/// Prefixes of the variables that configure `chatd`, its telemetry or its logging.
const SETTING_PREFIXES: [&str; 3] = ["CHAT_", "OTEL_", "RUST_LOG"];

/// The names of every variable in this process's environment that would configure a `chatd`
/// child (`CHAT_*`, test gates included; `OTEL_*`; `RUST_LOG*`). Remove them all from a child
/// process, then set what the test wants, so a developer's exported settings change nothing.
pub fn inherited_settings() -> Vec<OsString> {
    std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| {
            name.to_str()
                .is_some_and(|n| SETTING_PREFIXES.iter().any(|p| n.starts_with(p)))
        })
        .collect()
}
