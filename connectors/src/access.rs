//! Which files a file source may read.
//!
//! `aimatrix run` reads any path its user names ([`FileAccess::Any`]). A server reads, for jobs
//! submitted over the network, only files under the roots its operator configured
//! (`[files] roots` in the server's configuration: [`FileAccess::Under`]). The check is made
//! twice:
//!
//! - when a job is submitted, on the pattern as written ([`FileAccess::check_pattern`]): a
//!   lexical check that reads nothing from the file system, so a refused path does not reveal
//!   whether it exists. A pattern must be absolute, must not contain a `..` component nor a
//!   recursive `**` (the glob walker follows symbolic links to directories, also in loops),
//!   and its literal part (the components before the first one holding a glob character)
//!   must lie under a root;
//! - whenever a reader lists the files a pattern matches ([`FileAccess::admits`]): each file's
//!   canonical path (symbolic links resolved, `std::fs::canonicalize`) must lie under a root,
//!   so a symbolic link, or a directory linked in the middle of the path, cannot lead outside;
//! - whenever a file is opened ([`FileAccess::open`]): the file the descriptor refers to must
//!   lie under a root, so a link swapped in after the check cannot lead outside either (the
//!   reader reports that file and goes on with the others).
//!
//! Roots are canonical paths (see [`FileAccess::under`]), compared component by component.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which files a file source may read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileAccess {
    /// Any file the process can read (`aimatrix run`: the user's own command line).
    #[default]
    Any,
    /// Only files whose canonical path lies under one of these canonical directories (a
    /// server's `files.roots`; none: no file at all).
    Under(Vec<PathBuf>),
}

/// Why a pattern is refused by [`FileAccess::check_pattern`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// The server has no file roots: file sources are refused.
    #[error(
        "file sources are disabled on this server: it reads files only under the roots its operator configures \
         (`[files] roots = [\"/data/dir\", …]` in the server's config file, or AIMATRIX__FILES__ROOTS), and none are \
         configured; use a push source (kind = \"push\") or ask the operator"
    )]
    NoRoots,
    /// The pattern is not under any root (or is relative, or has a `..` component).
    #[error(
        "`{pattern}` is not under the server's file roots ({roots}; `[files] roots` in the server's config): only \
         absolute paths without `..` or `**` under a root can be read"
    )]
    Outside {
        /// The pattern as given.
        pattern: String,
        /// The roots, listed for the message.
        roots: String,
    },
}

impl FileAccess {
    /// Access to files under `roots`. Each root is kept canonical (symbolic links resolved),
    /// and also as written (made absolute) when that differs, so that a pattern written with
    /// the root's own name passes the lexical check; a file's canonical path can only lie
    /// under a root's canonical form.
    ///
    /// # Errors
    /// A root that does not exist or cannot be resolved (the error names it).
    pub fn under(roots: &[PathBuf]) -> std::io::Result<FileAccess> {
        let mut kept = Vec::new();
        for root in roots {
            let named =
                |e: std::io::Error| std::io::Error::new(e.kind(), format!("file root `{}`: {e}", root.display()));
            let canonical = std::fs::canonicalize(root).map_err(named)?;
            let written = std::path::absolute(root).map_err(named)?;
            for path in [canonical, written] {
                if !kept.contains(&path) {
                    kept.push(path);
                }
            }
        }
        Ok(FileAccess::Under(kept))
    }

    /// Checks a source's path pattern before anything is read (see the module docs): reads
    /// nothing from the file system.
    ///
    /// # Errors
    /// [`AccessError::NoRoots`] under no roots; [`AccessError::Outside`] for a relative
    /// pattern, one with a `..` component, or one whose literal part is under no root.
    pub fn check_pattern(&self, pattern: &str) -> Result<(), AccessError> {
        let FileAccess::Under(roots) = self else { return Ok(()) };
        if roots.is_empty() {
            return Err(AccessError::NoRoots);
        }
        let path = Path::new(pattern);
        let literal: PathBuf = path.components().take_while(|c| !has_glob_char(c.as_os_str())).collect();
        let inside = path.is_absolute()
            && !path.components().any(|c| c == Component::ParentDir || c.as_os_str() == "**")
            && roots.iter().any(|root| literal.starts_with(root));
        if inside {
            Ok(())
        } else {
            let roots = roots.iter().map(|r| format!("`{}`", r.display())).collect::<Vec<_>>().join(", ");
            Err(AccessError::Outside { pattern: pattern.to_owned(), roots })
        }
    }

    /// Whether the file at `path` (as a glob listed it) may be read: its canonical path lies
    /// under a root. A path that cannot be resolved (a dangling link) is not admitted.
    pub fn admits(&self, path: &Path) -> bool {
        match self {
            FileAccess::Any => true,
            FileAccess::Under(roots) => {
                std::fs::canonicalize(path).is_ok_and(|real| roots.iter().any(|root| real.starts_with(root)))
            }
        }
    }
}

impl FileAccess {
    /// Opens `path` for reading, and, under roots, checks the file actually opened: its path
    /// as the kernel names the open descriptor (`/proc/self/fd/N`) must lie under a root.
    /// [`FileAccess::admits`] checks a path before it is opened; a symbolic link or directory
    /// swapped in between (a race) would lead elsewhere, and this check sees where.
    ///
    /// # Errors
    /// The open's own error; `PermissionDenied` with the message `not read: it resolved
    /// outside the server's file roots (files.roots) when opened` (the file is closed unread);
    /// `Unsupported` under roots on a system without `/proc/self/fd`.
    pub fn open(&self, path: &Path) -> std::io::Result<std::fs::File> {
        let file = std::fs::File::open(path)?;
        let FileAccess::Under(roots) = self else { return Ok(file) };
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
            if roots.iter().any(|root| real.starts_with(root)) {
                return Ok(file);
            }
            Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, OutsideRoots))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (file, roots);
            Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "file roots (files.roots) need /proc/self/fd to check the files opened (Linux)",
            ))
        }
    }
}

/// The error of [`FileAccess::open`] for a file outside the roots.
#[derive(Debug)]
struct OutsideRoots;

impl std::fmt::Display for OutsideRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not read: it resolved outside the server's file roots (files.roots) when opened")
    }
}

impl std::error::Error for OutsideRoots {}

/// Whether `error` is [`FileAccess::open`]'s refusal of a file outside the roots.
pub(crate) fn is_outside_roots(error: &std::io::Error) -> bool {
    error.get_ref().is_some_and(|inner| inner.is::<OutsideRoots>())
}

/// Whether a path component holds a glob character (`*`, `?`, `[`).
fn has_glob_char(component: &std::ffi::OsStr) -> bool {
    component.to_string_lossy().contains(['*', '?', '['])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn under(roots: &[&str]) -> FileAccess {
        FileAccess::Under(roots.iter().map(PathBuf::from).collect())
    }

    #[test]
    fn patterns_are_checked_without_reading_the_file_system() {
        let access = under(&["/srv/data", "/var/log/agents"]);
        for ok in ["/srv/data/a.jsonl", "/srv/data/*.jsonl", "/srv/data/x/*/*.ndjson", "/var/log/agents/run-?.log"] {
            assert_eq!(access.check_pattern(ok), Ok(()), "{ok}");
        }
        for refused in [
            "/etc/passwd",
            "/srv/data/../../etc/passwd",
            "/srv/data/x/../y.jsonl",
            "/srv/database/a.jsonl", // a sibling whose name starts like a root
            "/srv/*/a.jsonl",        // a glob above the root
            "/*",
            "srv/data/a.jsonl", // relative
            "/srv/data/**/*.jsonl",
            "/srv",
        ] {
            assert!(matches!(access.check_pattern(refused), Err(AccessError::Outside { .. })), "{refused}");
        }
        assert_eq!(under(&[]).check_pattern("/srv/data/a.jsonl"), Err(AccessError::NoRoots));
        assert_eq!(FileAccess::Any.check_pattern("../../etc/passwd"), Ok(()));
    }

    #[cfg(unix)]
    #[test]
    fn links_out_of_a_root_are_not_admitted() {
        let dir = std::env::temp_dir().join(format!("amx-access-{}", std::process::id()));
        let (root, outside) = (dir.join("root"), dir.join("outside"));
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("sub/in.jsonl"), "{}\n").unwrap();
        std::fs::write(outside.join("secret.jsonl"), "{}\n").unwrap();
        std::os::unix::fs::symlink(outside.join("secret.jsonl"), root.join("link.jsonl")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("linkdir")).unwrap();
        std::os::unix::fs::symlink(dir.join("nowhere"), root.join("dangling.jsonl")).unwrap();
        let access = FileAccess::under(std::slice::from_ref(&root)).unwrap();
        assert!(access.admits(&root.join("sub/in.jsonl")));
        assert!(!access.admits(&root.join("link.jsonl")));
        assert!(!access.admits(&root.join("linkdir/secret.jsonl")));
        assert!(!access.admits(&root.join("dangling.jsonl")));
        assert!(!access.admits(&outside.join("secret.jsonl")));
        assert!(FileAccess::Any.admits(&root.join("link.jsonl")));
        // What is opened is checked too (a link swapped in after `admits` said yes).
        assert!(access.open(&root.join("sub/in.jsonl")).is_ok());
        let e = access.open(&root.join("link.jsonl")).expect_err("outside");
        assert!(e.kind() == std::io::ErrorKind::PermissionDenied && is_outside_roots(&e), "{e}");
        assert!(!is_outside_roots(&std::io::Error::from(std::io::ErrorKind::PermissionDenied)));
        assert!(access.open(&root.join("linkdir/secret.jsonl")).is_err());
        assert!(FileAccess::Any.open(&root.join("link.jsonl")).is_ok());
        assert!(FileAccess::under(&[dir.join("missing")]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
