//! Where everything lives below a node root (`/` on a real node, a directory in tests), exactly
//! as DESIGN §4 lays it out.

use std::path::{Path, PathBuf};

/// The node's filesystem root and the paths below it.
#[derive(Clone, Debug)]
pub struct NodeRoot {
    root: PathBuf,
}

impl NodeRoot {
    /// A node rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        NodeRoot { root: root.into() }
    }

    /// The root itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `esp/metropolis`: what the installer and earlier boots left in cleartext or sealed.
    pub fn esp(&self) -> PathBuf {
        self.root.join("esp/metropolis")
    }

    /// NodeParameters, written by the installer.
    pub fn parameters(&self) -> PathBuf {
        self.esp().join("parameters.pb")
    }

    /// The TPM-sealed SealedConfiguration.
    pub fn sealed_configuration(&self) -> PathBuf {
        self.esp().join("sealed_configuration.pb")
    }

    /// The TPM-sealed EnrolmentJournal of an unfinished bootstrap or register.
    pub fn enrolment_journal(&self) -> PathBuf {
        self.esp().join("enrolment_journal.pb")
    }

    /// Present while the data partition holds a format whose keys no enrolment journal holds
    /// yet: a boot that finds it and no journal may format the partition again.
    pub fn formatting_mark(&self) -> PathBuf {
        self.esp().join("formatting")
    }

    /// The TPM-sealed shares of peers' CUKs a consensus member holds (quorum unlock).
    pub fn held_shares(&self) -> PathBuf {
        self.esp().join("held_shares.pb")
    }

    /// The PcrAuthority, in cleartext: the cluster's PCR policy for this node, its approvals and
    /// the node's recovery key.
    pub fn pcr_authority(&self) -> PathBuf {
        self.esp().join("pcr_authority.pb")
    }

    /// The ClusterDirectory, in cleartext.
    pub fn cluster_directory(&self) -> PathBuf {
        self.esp().join("cluster_directory.pb")
    }

    /// The data partition's mount point.
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// etcd's data directory.
    pub fn etcd_data(&self) -> PathBuf {
        self.data().join("etcd/data")
    }

    /// Present from etcd's first start on a new data directory until etcd first answers: a kill
    /// in between can leave a member directory it cannot restart from (see `consensus`).
    pub fn etcd_first_start(&self) -> PathBuf {
        self.data().join("etcd/first_start")
    }

    /// Whether etcd's data holds a member to restart: one whose first start finished.
    pub fn etcd_member_to_restart(&self) -> bool {
        self.etcd_data().join("member").exists() && !self.etcd_first_start().exists()
    }

    /// etcd's peer PKI: `ca.pem`, `cert.pem`, `key.pem`.
    pub fn etcd_peer_pki(&self) -> PathBuf {
        self.data().join("etcd/peer_pki")
    }

    /// The peer CRL etcd checks peers against.
    pub fn etcd_peer_crl(&self) -> PathBuf {
        self.data().join("etcd/peer_crl.pem")
    }

    /// The node's credentials: `ca.pem`, `cert.pem`, `key.pem`.
    pub fn node_credentials(&self) -> PathBuf {
        self.data().join("node/credentials")
    }

    /// The tmpfs for state that must not outlive a boot.
    pub fn ephemeral(&self) -> PathBuf {
        self.root.join("ephemeral")
    }

    /// The debug endpoint's kill token (0400, root only): what `polisctl kill-actor` presents.
    pub fn debug_token(&self) -> PathBuf {
        self.ephemeral().join("debug-token")
    }

    /// The hosts file the hostsfile actor keeps.
    pub fn hosts(&self) -> PathBuf {
        self.ephemeral().join("hosts")
    }

    /// The machine ID.
    pub fn machine_id(&self) -> PathBuf {
        self.ephemeral().join("machine-id")
    }

    /// etcd's working directory, where its local client socket lives (etcd names the file).
    pub fn consensus(&self) -> PathBuf {
        self.ephemeral().join("consensus")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_design() {
        let r = NodeRoot::new("/n");
        let paths = [
            (r.parameters(), "/n/esp/metropolis/parameters.pb"),
            (
                r.sealed_configuration(),
                "/n/esp/metropolis/sealed_configuration.pb",
            ),
            (r.formatting_mark(), "/n/esp/metropolis/formatting"),
            (
                r.cluster_directory(),
                "/n/esp/metropolis/cluster_directory.pb",
            ),
            (r.etcd_data(), "/n/data/etcd/data"),
            (
                r.etcd_peer_pki().join("ca.pem"),
                "/n/data/etcd/peer_pki/ca.pem",
            ),
            (r.etcd_peer_crl(), "/n/data/etcd/peer_crl.pem"),
            (
                r.node_credentials().join("key.pem"),
                "/n/data/node/credentials/key.pem",
            ),
            (r.hosts(), "/n/ephemeral/hosts"),
            (r.machine_id(), "/n/ephemeral/machine-id"),
            (r.consensus(), "/n/ephemeral/consensus"),
        ];
        for (got, want) in paths {
            assert_eq!(got, PathBuf::from(want));
        }
    }
}
