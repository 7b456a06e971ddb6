//! The clusters an owner manages, named in one file under the XDG config directory
//! (`$XDG_CONFIG_HOME/polis/clusters.json`, else `$HOME/.config/polis/clusters.json`): per
//! name, where its Curators answer and which directory holds the owner's credentials
//! ([`crate::owner::Credentials`]); and which cluster commands use when none is named.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::curator::CURATOR_PORT;
use crate::fsutil::{self, FsError, PUBLIC_MODE};

/// Why the clusters file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClustersError {
    /// Neither `XDG_CONFIG_HOME` nor `HOME` is set.
    #[error("no configuration directory: set XDG_CONFIG_HOME or HOME")]
    NoConfigDir,
    /// The file could not be read or written.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The file is not a clusters file.
    #[error("{path} is not a clusters file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No cluster of that name is configured.
    #[error("no cluster named {0:?} in {1}")]
    Unknown(String, PathBuf),
    /// An endpoint is not `HOST[:PORT]`, or its host does not resolve.
    #[error("{0:?} is not a Curator endpoint (HOST or HOST:PORT): {1}")]
    BadEndpoint(String, String),
}

/// Where one cluster's Curators answer, and the owner's credentials for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// Curator endpoints, `HOST[:PORT]`, tried in order.
    pub endpoints: Vec<String>,
    /// The directory holding the owner key, the owner certificate and the cluster CA.
    pub credentials: PathBuf,
}

/// The clusters file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clusters {
    /// The cluster commands use when none is named.
    pub current: Option<String>,
    /// Every configured cluster, by name.
    pub clusters: BTreeMap<String, Cluster>,
}

impl Clusters {
    /// Where the clusters file is, by the XDG base directory rules.
    pub fn path() -> Result<PathBuf, ClustersError> {
        let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
            Some(config) => PathBuf::from(config),
            None => PathBuf::from(std::env::var_os("HOME").ok_or(ClustersError::NoConfigDir)?)
                .join(".config"),
        };
        Ok(base.join("polis").join("clusters.json"))
    }

    /// The file at `path`; none configured if it does not exist.
    pub fn load(path: &Path) -> Result<Self, ClustersError> {
        match fsutil::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ClustersError::Corrupt {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
            Err(e) if e.is_not_found() => Ok(Clusters::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Replace the file at `path` with these clusters.
    pub fn save(&self, path: &Path) -> Result<(), ClustersError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| ClustersError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(fsutil::write_atomic(path, text.as_bytes(), PUBLIC_MODE)?)
    }

    /// Add (or replace) cluster `name` and make it the current one.
    pub fn set_current(&mut self, name: &str, cluster: Cluster) {
        self.clusters.insert(name.to_owned(), cluster);
        self.current = Some(name.to_owned());
    }

    /// Cluster `name`, or the current one if no name is given (none if none is current).
    pub fn select(
        &self,
        name: Option<&str>,
        path: &Path,
    ) -> Result<Option<&Cluster>, ClustersError> {
        let Some(name) = name.or(self.current.as_deref()) else {
            return Ok(None);
        };
        self.clusters
            .get(name)
            .map(Some)
            .ok_or_else(|| ClustersError::Unknown(name.to_owned(), path.to_owned()))
    }
}

/// A Curator endpoint, `HOST` or `HOST:PORT` (port 7835 if none), resolved.
pub fn endpoint(text: &str) -> Result<SocketAddr, ClustersError> {
    let bad = |why: String| ClustersError::BadEndpoint(text.to_owned(), why);
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, CURATOR_PORT));
    }
    let with_port = match text.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => text.to_owned(),
        _ => format!("{text}:{CURATOR_PORT}"),
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("resolves to no address".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_take_the_curator_port_unless_given_one() {
        let default = |ip: &str| SocketAddr::new(ip.parse().unwrap(), CURATOR_PORT);
        assert_eq!(endpoint("198.18.0.2").unwrap(), default("198.18.0.2"));
        assert_eq!(endpoint("::1").unwrap(), default("::1"));
        assert_eq!(
            endpoint("198.18.0.2:9000").unwrap(),
            "198.18.0.2:9000".parse().unwrap()
        );
        assert_eq!(
            endpoint("[::1]:9000").unwrap(),
            "[::1]:9000".parse().unwrap()
        );
        assert_eq!(endpoint("localhost").unwrap().port(), CURATOR_PORT);
        assert!(endpoint("198.18.0.2:70000").is_err());
    }

    #[test]
    fn the_file_round_trips_and_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("polis/clusters.json");
        assert_eq!(Clusters::load(&path).unwrap(), Clusters::default());
        assert!(Clusters::default().select(None, &path).unwrap().is_none());
        let mut clusters = Clusters::default();
        let lab = Cluster {
            endpoints: vec!["198.18.0.2".into()],
            credentials: "/tmp/lab".into(),
        };
        clusters.set_current("lab", lab.clone());
        clusters.save(&path).unwrap();
        let loaded = Clusters::load(&path).unwrap();
        assert_eq!(loaded.select(None, &path).unwrap(), Some(&lab));
        let err = loaded.select(Some("prod"), &path).unwrap_err().to_string();
        assert!(
            err.contains("prod") && err.contains("clusters.json"),
            "{err}"
        );
        std::fs::write(&path, b"{not json").unwrap();
        let err = Clusters::load(&path).unwrap_err().to_string();
        assert!(err.contains("clusters.json"), "{err}");
    }
}
