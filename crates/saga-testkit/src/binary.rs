//! Finding the nats-server binary and checking its version.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::TestkitError;

/// Environment variable that overrides where the nats-server binary is.
pub const NATS_SERVER_BIN_ENV: &str = "NATS_SERVER_BIN";

/// The version `scripts/install-nats-server.sh` installs.
pub const PINNED_VERSION: ServerVersion = ServerVersion::new(2, 12, 8);

/// The oldest version accepted: JetStream's `sync_interval` is 2.10+.
pub const MIN_VERSION: ServerVersion = ServerVersion::new(2, 10, 0);

/// A nats-server version, `major.minor.patch` (pre-release suffixes are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl ServerVersion {
    /// `major.minor.patch`.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        ServerVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses what `nats-server --version` prints (`nats-server: v2.12.8`),
    /// or a bare `2.12.8` / `v2.12.8`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let word = text.rsplit(char::is_whitespace).next()?;
        let word = word.strip_prefix('v').unwrap_or(word);
        let mut parts = word.splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch_part = parts.next()?;
        let digits = patch_part
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(patch_part.len());
        let patch = patch_part[..digits].parse().ok()?;
        Some(ServerVersion {
            major,
            minor,
            patch,
        })
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The root of the cargo workspace this crate belongs to.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // crates/saga-testkit -> crates -> <root>
    manifest_dir
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| manifest_dir.join("../.."), Path::to_path_buf)
}

/// Where `scripts/install-nats-server.sh` puts the binary:
/// `<workspace root>/.tools/bin/nats-server`.
pub fn default_binary_path() -> PathBuf {
    workspace_root()
        .join(".tools")
        .join("bin")
        .join("nats-server")
}

/// A nats-server binary whose version has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsBinary {
    path: PathBuf,
    version: ServerVersion,
}

impl NatsBinary {
    /// `$NATS_SERVER_BIN` if set (and not empty), else [`default_binary_path`].
    ///
    /// Fails with an error that says how to install the server when the file
    /// is missing, and refuses versions older than [`MIN_VERSION`].
    pub fn locate() -> Result<Self, TestkitError> {
        match std::env::var_os(NATS_SERVER_BIN_ENV) {
            Some(path) if !path.is_empty() => {
                Self::check(PathBuf::from(path), "set by NATS_SERVER_BIN")
            }
            _ => Self::check(default_binary_path(), "default location"),
        }
    }

    /// The binary at `path`, with the same checks as [`NatsBinary::locate`].
    pub fn at(path: impl Into<PathBuf>) -> Result<Self, TestkitError> {
        Self::check(path.into(), "given explicitly")
    }

    fn check(path: PathBuf, origin: &'static str) -> Result<Self, TestkitError> {
        // `is_file` follows symlinks: a dangling .tools/bin link counts as missing.
        if !path.is_file() {
            return Err(TestkitError::BinaryNotFound { path, origin });
        }
        let output = Command::new(&path)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| TestkitError::io(format!("running `{} --version`", path.display()), e))?;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        let version = match ServerVersion::parse(&text) {
            Some(v) if output.status.success() => v,
            _ => return Err(TestkitError::UnknownVersion { path, output: text }),
        };
        if version < MIN_VERSION {
            return Err(TestkitError::BinaryTooOld {
                path,
                found: version,
                required: MIN_VERSION,
            });
        }
        Ok(NatsBinary { path, version })
    }

    /// Path of the binary.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Version it reported.
    pub fn version(&self) -> ServerVersion {
        self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_output() {
        assert_eq!(
            ServerVersion::parse("nats-server: v2.12.8\n"),
            Some(ServerVersion::new(2, 12, 8))
        );
        assert_eq!(
            ServerVersion::parse("v2.9.10"),
            Some(ServerVersion::new(2, 9, 10))
        );
        assert_eq!(
            ServerVersion::parse("2.11.0-RC.3"),
            Some(ServerVersion::new(2, 11, 0))
        );
        assert_eq!(ServerVersion::parse("garbage"), None);
        assert_eq!(ServerVersion::parse(""), None);
    }

    #[test]
    fn orders_versions() {
        assert!(ServerVersion::new(2, 9, 10) < MIN_VERSION);
        assert!(PINNED_VERSION >= MIN_VERSION);
        assert!(ServerVersion::new(3, 0, 0) > ServerVersion::new(2, 99, 99));
    }

    #[test]
    fn default_path_is_in_the_workspace() {
        let root = workspace_root();
        assert!(root.join("Cargo.toml").is_file(), "{}", root.display());
        assert!(root.join("crates").join("saga-testkit").is_dir());
        assert!(default_binary_path().ends_with(".tools/bin/nats-server"));
    }

    #[test]
    fn missing_binary_error_says_how_to_install() {
        let err = NatsBinary::at("/nonexistent/nats-server").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, TestkitError::BinaryNotFound { .. }), "{msg}");
        assert!(msg.contains("make setup"), "{msg}");
        assert!(msg.contains("scripts/install-nats-server.sh"), "{msg}");
        assert!(msg.contains("NATS_SERVER_BIN"), "{msg}");
    }
}
