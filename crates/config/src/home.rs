//! `$LIMA_HOME` and its layout.

use crate::error::ConfigError;
use std::path::{Path, PathBuf};

/// Lima's home directory (`$LIMA_HOME`, default `~/.lima`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimaHome {
    path: PathBuf,
}

impl LimaHome {
    /// From `$LIMA_HOME`, or `$HOME/.lima` when it is unset or empty. If the directory exists,
    /// its symlinks are resolved (as Lima's `EvalSymlinks`).
    pub fn from_env() -> Result<Self, ConfigError> {
        let path = match std::env::var_os("LIMA_HOME").filter(|v| !v.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => {
                let home = std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .ok_or(ConfigError::NoHome)?;
                PathBuf::from(home).join(".lima")
            }
        };
        Ok(Self::resolve(path))
    }

    /// Uses `path` as given, with symlinks resolved if it exists.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::resolve(path.into())
    }

    fn resolve(path: PathBuf) -> Self {
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        LimaHome { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `_config`.
    pub fn config_dir(&self) -> PathBuf {
        self.path.join("_config")
    }

    /// `_config/networks.yaml`.
    pub fn networks_yaml(&self) -> PathBuf {
        self.config_dir().join("networks.yaml")
    }

    /// `_networks`: daemon logs and user-v2 state.
    pub fn networks_dir(&self) -> PathBuf {
        self.path.join("_networks")
    }

    /// `<name>`: an instance's directory.
    pub fn instance_dir(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}
