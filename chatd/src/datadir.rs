//! The data directory belongs to chatd's user alone: it holds every message ever sent (the
//! event log, the read models, the search index) and the JWT secret.
//!
//! [`restrict_new_files`] sets the process umask so that everything chatd (SQLite, Tantivy)
//! creates from then on is 0600 (directories 0700); [`secure`] creates the directory and
//! tightens whatever an older version or an operator left more open; [`check_secret_file`]
//! refuses a JWT secret file that others could have read.

use std::path::Path;

use anyhow::Context;

/// Mode bits of group and others.
#[cfg(unix)]
const GROUP_OTHER: u32 = 0o077;

/// From now on, files this process creates are readable by its user only (umask 077).
/// Process-wide: the binary calls it first thing.
pub fn restrict_new_files() {
    #[cfg(unix)]
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(GROUP_OTHER as _));
}

/// Creates `dir` if needed and makes it and everything in it accessible to this user only
/// (directories 0700, files 0600). Returns how many entries it had to tighten.
pub fn secure(dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    let tightened = tighten(dir).with_context(|| {
        format!(
            "cannot restrict the permissions of data dir {}",
            dir.display()
        )
    })?;
    if tightened > 0 {
        tracing::warn!(
            data_dir = %dir.display(),
            entries = tightened,
            "data dir entries were readable by group or others; now owner-only"
        );
    }
    Ok(tightened)
}

#[cfg(unix)]
fn tighten(path: &Path) -> std::io::Result<usize> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(0);
    }
    let mut count = 0;
    let mode = meta.permissions().mode() & 0o777;
    let wanted = if meta.is_dir() { 0o700 } else { 0o600 };
    // Owner bits are kept only as far as they are wanted (no executable data files).
    let tight = mode & wanted;
    let tight = if meta.is_dir() { tight | 0o700 } else { tight };
    if tight != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(tight))?;
        count += 1;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            count += tighten(&entry?.path())?;
        }
    }
    Ok(count)
}

#[cfg(not(unix))]
fn tighten(_: &Path) -> std::io::Result<usize> {
    Ok(0)
}

/// Refuses a secret file that group or others may read or write: the secret signs every
/// access token, so whoever could read it may have forged tokens, and the key must be
/// replaced rather than quietly re-protected. A missing file is fine (it is generated).
pub fn check_secret_file(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = match std::fs::metadata(path) {
            Ok(meta) => meta.permissions().mode(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        anyhow::ensure!(
            mode & GROUP_OTHER == 0,
            "the JWT secret file {} is accessible to group or others (mode {:04o}): anyone \
             who read it can forge access tokens. Replace the secret (delete the file to have \
             a new one generated; every user logs in again) or, if you are sure nobody read \
             it, `chmod 600` it",
            path.display(),
            mode & 0o7777
        );
    }
    Ok(())
}

/// Below this many characters a JWT secret holds less than 256 random bits even as base64
/// (`openssl rand -base64 32` prints 44).
pub const SHORT_SECRET: usize = 44;

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn secure_tightens_directories_and_files_recursively() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        std::fs::create_dir_all(dir.join("search")).unwrap();
        std::fs::write(dir.join("events.db"), b"").unwrap();
        std::fs::write(dir.join("search/seg"), b"").unwrap();
        for (p, m) in [
            (dir.clone(), 0o755),
            (dir.join("search"), 0o775),
            (dir.join("events.db"), 0o644),
            (dir.join("search/seg"), 0o700),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
        }
        assert_eq!(secure(&dir).unwrap(), 4);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("search")), 0o700);
        assert_eq!(mode(&dir.join("events.db")), 0o600);
        assert_eq!(mode(&dir.join("search/seg")), 0o600);
        assert_eq!(secure(&dir).unwrap(), 0, "nothing left to do");
    }

    #[test]
    fn a_secret_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt_secret");
        check_secret_file(&path).unwrap();
        std::fs::write(&path, "x".repeat(64)).unwrap();
        for (m, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
            assert_eq!(check_secret_file(&path).is_ok(), ok, "{m:o}");
        }
    }
}
