//! The hostsfile actor: keeps `ephemeral/hosts` listing localhost, this node and every node of
//! the cluster directory (etcd peers name each other by node ID, so every node must resolve before
//! etcd starts), writes `ephemeral/machine-id`, and sets the hostname when told to. It rewrites on
//! every change of the network status or the directory; nodes that leave the directory (e.g.
//! decommissioned ones) leave the file.

use std::collections::BTreeMap;
use std::net::IpAddr;

use polis_actors::{Actor, Ctx, Failure, Started, Watchable};

use crate::fsutil::{self, PUBLIC_MODE};
use crate::metrics::health::Health;
use crate::network::NetworkStatus;
use crate::proto::common::ClusterDirectory;
use crate::storage::NodeRoot;

/// What the hostsfile actor writes and from what.
#[derive(Clone, Debug)]
pub struct HostsConfig {
    /// Where `ephemeral/` is.
    pub root: NodeRoot,
    /// This node's ID.
    pub node_id: String,
    /// Set the system hostname to the node ID (a real node, or a test in its own UTS namespace).
    pub set_hostname: bool,
    /// Also overwrite this file in place with the same text: the system's `/etc/hosts` where it
    /// is a bind mount (a node in a network namespace) rather than a link to `ephemeral/hosts`.
    pub system_hosts: Option<std::path::PathBuf>,
    /// Where the entry count is reported.
    pub health: Health,
}

/// The hostsfile actor.
pub struct Hostsfile {
    config: HostsConfig,
    network: Watchable<NetworkStatus>,
    directory: Watchable<ClusterDirectory>,
}

/// Why the hosts file could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// The written file does not resolve this node's ID to its address.
    #[error("{path} does not resolve {node_id} to {address}")]
    SelfNotResolved {
        /// The hosts file.
        path: String,
        /// This node.
        node_id: String,
        /// Its address.
        address: IpAddr,
    },
}

impl Hostsfile {
    /// Keep the hosts file from `network` and `directory`.
    pub fn new(
        config: HostsConfig,
        network: Watchable<NetworkStatus>,
        directory: Watchable<ClusterDirectory>,
    ) -> Self {
        Hostsfile {
            config,
            network,
            directory,
        }
    }
}

impl Actor for Hostsfile {
    fn started(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<Started, Failure> {
        let machine_id = machine_id(&self.config.node_id);
        fsutil::write_ephemeral(
            &self.config.root.machine_id(),
            format!("{machine_id}\n").as_bytes(),
            PUBLIC_MODE,
        )?;
        if self.config.set_hostname {
            nix::unistd::sethostname(&self.config.node_id)
                .map_err(|e| Failure::msg(format!("cannot set the hostname: {e}")))?;
        }
        self.rewrite(ctx);
        // Healthy once the first file is written: etcd peers resolve each other through it.
        Ok(Started::Pending)
    }
}

// ---- helpers ----

impl Hostsfile {
    /// Render the file from the inputs as they are now and write it on the blocking pool (the
    /// node's event loop, which serves the Curator, never waits on the disk); then check it and
    /// wait for the next change. A change while the write runs is seen afterwards, so a burst
    /// of changes costs one more write, not one per change.
    fn rewrite(&self, ctx: &mut Ctx<'_, Self>) {
        let (mut network, mut directory) = (self.network.subscribe(), self.directory.subscribe());
        let own = network.borrow_and_update().external_address;
        let hosts = render(&self.config.node_id, own, &directory.borrow_and_update());
        let path = self.config.root.hosts();
        let system = self.config.system_hosts.clone();
        let text = hosts.clone();
        let write = fsutil::off_thread(&path.clone(), move || {
            fsutil::write_ephemeral(&path, text.as_bytes(), PUBLIC_MODE)?;
            match system {
                Some(system) => fsutil::overwrite_in_place(&system, text.as_bytes()),
                None => Ok(()),
            }
        });
        ctx.spawn(write, move |written, hostsfile, ctx| {
            written?;
            hostsfile.check(ctx, &hosts, own)?;
            ctx.healthy();
            ctx.spawn(
                async move {
                    tokio::select! {
                        r = network.changed() => r.is_ok(),
                        r = directory.changed() => r.is_ok(),
                    }
                },
                |alive, hostsfile, ctx| {
                    if alive {
                        hostsfile.rewrite(ctx);
                    }
                    Ok(())
                },
            );
            Ok(())
        });
    }

    /// The written `hosts` must resolve this node to its address `own`; report its entries.
    fn check(&self, ctx: &Ctx<'_, Self>, hosts: &str, own: Option<IpAddr>) -> Result<(), Failure> {
        if let Some(address) = own {
            if resolve(hosts, &self.config.node_id) != Some(address) {
                return Err(HostsError::SelfNotResolved {
                    path: self.config.root.hosts().display().to_string(),
                    node_id: self.config.node_id.clone(),
                    address,
                }
                .into());
            }
        }
        let entries = hosts
            .lines()
            .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
            .count();
        self.config.health.hosts_entries(entries);
        slog::debug!(ctx.log(), "hosts file written"; "entries" => entries);
        Ok(())
    }
}

/// The hosts file: localhost, this node (when its address is known), then every other node of
/// the directory at its first address, sorted by ID. The directory comes from the ESP and from
/// Curators; the fuzz target `cluster_directory` checks that whatever it holds, each line of the
/// result is one address and one name, and every listed node resolves to its address.
pub fn render(node_id: &str, own: Option<IpAddr>, directory: &ClusterDirectory) -> String {
    let mut out = String::from("127.0.0.1 localhost\n::1 localhost\n");
    if let Some(address) = own {
        out.push_str(&format!("{address} {node_id}\n"));
    }
    let others: BTreeMap<&str, IpAddr> = directory
        .nodes
        .iter()
        .filter(|n| n.id != node_id && is_listable(&n.id))
        .filter_map(|n| {
            let address = n.addresses.iter().find_map(|a| a.host.parse().ok())?;
            Some((n.id.as_str(), address))
        })
        .collect();
    for (id, address) in others {
        out.push_str(&format!("{address} {id}\n"));
    }
    out
}

/// Whether the hosts file may name a node `id`: a DNS name (letters, digits, `-` and `.`, at
/// most 253 of them) other than `localhost`. A directory from a damaged ESP or a faulty Curator
/// must not put control characters, spaces or a second name on a hosts line, nor take over
/// `localhost`.
pub fn is_listable(id: &str) -> bool {
    (1..=253).contains(&id.len())
        && id != "localhost"
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// What `name` resolves to in hosts-file text.
pub fn resolve(hosts: &str, name: &str) -> Option<IpAddr> {
    hosts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let address = fields.next()?.parse().ok()?;
        fields.any(|n| n == name).then_some(address)
    })
}

/// The machine ID: the 32 hex digits of the node ID (the first 16 bytes of its public key).
fn machine_id(node_id: &str) -> String {
    node_id.trim_start_matches("metropolis-").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::common::{cluster_directory::Node, Address};

    fn node(id: &str, host: &str) -> Node {
        Node {
            id: id.into(),
            addresses: vec![Address { host: host.into() }],
            curator: false,
        }
    }

    #[test]
    fn a_node_id_that_is_no_dns_name_is_left_out() {
        let dir = ClusterDirectory {
            nodes: vec![
                node("metropolis-a\n198.18.0.9 evil", "198.18.0.3"),
                node("metropolis-b\u{6}", "198.18.0.4"),
                node("localhost", "198.18.0.5"),
                node("metropolis-c", "198.18.0.6"),
            ],
            crl: Vec::new(),
        };
        let hosts = render("metropolis-self", None, &dir);
        assert_eq!(
            hosts,
            "127.0.0.1 localhost\n::1 localhost\n198.18.0.6 metropolis-c\n"
        );
    }

    #[test]
    fn lists_localhost_self_and_every_other_node() {
        let dir = ClusterDirectory {
            nodes: vec![
                node("metropolis-c", "198.18.0.4"),
                node("metropolis-a", "198.18.0.2"),
                node("metropolis-b", "198.18.0.3"),
            ],
            crl: Vec::new(),
        };
        let hosts = render("metropolis-a", Some("198.18.0.2".parse().unwrap()), &dir);
        assert_eq!(
            hosts,
            "127.0.0.1 localhost\n::1 localhost\n198.18.0.2 metropolis-a\n198.18.0.3 metropolis-b\n198.18.0.4 metropolis-c\n"
        );
        assert_eq!(
            resolve(&hosts, "metropolis-c"),
            Some("198.18.0.4".parse().unwrap())
        );
        assert_eq!(resolve(&hosts, "metropolis-z"), None);
        assert_eq!(machine_id("metropolis-0123"), "0123");
    }
}
