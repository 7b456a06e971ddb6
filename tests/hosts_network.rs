//! The network and hostsfile actors together: the hosts file follows the network status and the
//! cluster directory, forgets nodes that leave, and is rewritten after kills of either actor.

use std::time::Duration;

use polis::hostsfile::{HostsConfig, Hostsfile};
use polis::network::{AddressSource, Network, NetworkStatus};
use polis::poll::{holds, Poll};
use polis::proto::common::{cluster_directory::Node, Address, ClusterDirectory};
use polis::storage::NodeRoot;
use polis_actors::{ChildSpec, Kill, Strategy, SupervisorSpec, Tree, Watchable};

const SELF: &str = "metropolis-000102030405060708090a0b0c0d0e0f";

fn node(id: &str, host: &str) -> Node {
    Node {
        id: id.into(),
        addresses: vec![Address { host: host.into() }],
        curator: false,
    }
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    Poll::new(Duration::from_millis(10), Duration::from_secs(30))
        .until(async || holds(cond(), what))
        .await
        .unwrap_or_else(|what| panic!("timed out waiting until {what}"));
}

#[actix_rt::test]
async fn the_hosts_file_follows_network_and_directory_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let root = NodeRoot::new(dir.path());
    let status = Watchable::new(NetworkStatus::default());
    let directory = Watchable::new(ClusterDirectory {
        nodes: vec![node(SELF, "198.18.0.2"), node("metropolis-b", "198.18.0.3")],
        crl: Vec::new(),
    });
    let source = AddressSource::Static("198.18.0.2".parse().unwrap());
    let network_status = status.clone();
    let (network, _) = ChildSpec::worker("network", move || {
        Ok(Network::new(source.clone(), network_status.clone()))
    });
    let config = HostsConfig {
        root: root.clone(),
        node_id: SELF.into(),
        set_hostname: false,
        system_hosts: None,
        health: Default::default(),
    };
    let (hosts_status, hosts_directory) = (status.clone(), directory.clone());
    let (hostsfile, _) = ChildSpec::worker("hostsfile", move || {
        Ok(Hostsfile::new(
            config.clone(),
            hosts_status.clone(),
            hosts_directory.clone(),
        ))
    });
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(10, Duration::from_secs(10))
        .child(network)
        .child(hostsfile);
    let tree = Tree::start(spec, slog::Logger::root(slog::Discard, slog::o!()))
        .await
        .unwrap();
    let hosts = || std::fs::read_to_string(root.hosts()).unwrap_or_default();

    assert_eq!(
        hosts(),
        format!("127.0.0.1 localhost\n::1 localhost\n198.18.0.2 {SELF}\n198.18.0.3 metropolis-b\n")
    );
    assert_eq!(
        std::fs::read_to_string(root.machine_id()).unwrap(),
        "000102030405060708090a0b0c0d0e0f\n"
    );

    // A node joins, another is decommissioned (it leaves the directory).
    directory.set(ClusterDirectory {
        nodes: vec![node(SELF, "198.18.0.2"), node("metropolis-c", "198.18.0.4")],
        crl: Vec::new(),
    });
    until("c listed and b forgotten", || {
        hosts().contains("metropolis-c") && !hosts().contains("metropolis-b")
    })
    .await;

    // The address changes; then the network actor restarts and publishes its configured one.
    status.set(NetworkStatus {
        external_address: Some("198.18.0.9".parse().unwrap()),
    });
    until("new own address", || {
        hosts().contains(&format!("198.18.0.9 {SELF}"))
    })
    .await;
    tree.kill("/network", Kill::Crash).unwrap();
    until("configured address back", || {
        hosts().contains(&format!("198.18.0.2 {SELF}"))
    })
    .await;

    // The hostsfile actor rewrites a lost file when it comes back.
    std::fs::remove_file(root.hosts()).unwrap();
    tree.kill("/hostsfile", Kill::Brutal).unwrap();
    until("file rewritten", || hosts().contains("metropolis-c")).await;
    // And keeps following changes in its new incarnation.
    directory.set(ClusterDirectory {
        nodes: vec![node(SELF, "198.18.0.2")],
        crl: Vec::new(),
    });
    until("c forgotten", || !hosts().contains("metropolis-c")).await;
    assert_eq!(tree.registry().actor("/hostsfile").unwrap().generation, 2);
    tree.shutdown().await;
}

#[actix_rt::test]
async fn an_interface_address_is_published() {
    let status = Watchable::new(NetworkStatus::default());
    let published = status.clone();
    let (network, _) = ChildSpec::worker("network", move || {
        Ok(Network::new(
            AddressSource::Interface("lo".into()),
            published.clone(),
        ))
    });
    let tree = Tree::start(
        SupervisorSpec::new(Strategy::OneForOne).child(network),
        slog::Logger::root(slog::Discard, slog::o!()),
    )
    .await
    .unwrap();
    assert_eq!(
        status.get().external_address,
        Some("127.0.0.1".parse().unwrap())
    );
    tree.shutdown().await;
}

#[test]
fn the_hostname_is_set_in_the_nodes_own_uts_namespace() {
    // The node's actors run on a thread of their own that gets its own UTS namespace; this
    // thread, like the machine, keeps its hostname.
    let before = nix::unistd::gethostname().unwrap();
    let inside = std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS)
            .expect("a UTS namespace (tests run as root)");
        actix_rt::System::new().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let config = HostsConfig {
                root: NodeRoot::new(dir.path()),
                node_id: SELF.into(),
                set_hostname: true,
                system_hosts: None,
                health: Default::default(),
            };
            let (status, directory) = (
                Watchable::new(NetworkStatus::default()),
                Watchable::new(ClusterDirectory::default()),
            );
            let (hostsfile, _) = ChildSpec::worker("hostsfile", move || {
                Ok(Hostsfile::new(
                    config.clone(),
                    status.clone(),
                    directory.clone(),
                ))
            });
            let spec = SupervisorSpec::new(Strategy::OneForOne).child(hostsfile);
            let tree = Tree::start(spec, slog::Logger::root(slog::Discard, slog::o!()))
                .await
                .unwrap();
            let hostname = nix::unistd::gethostname().unwrap();
            tree.shutdown().await;
            hostname
        })
    })
    .join()
    .unwrap();
    assert_eq!(inside, SELF);
    assert_eq!(nix::unistd::gethostname().unwrap(), before);
}
