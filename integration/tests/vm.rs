//! Tier 4 (DESIGN §7): `polis-node` as PID 1 of Debian's kernel in QEMU (TCG), with swtpm as the
//! VM's `tpm-tis` TPM (the node opens /dev/tpmrm0), node parameters over fw_cfg, a GPT disk with
//! a vfat ESP and a LUKS2 data partition, and a TAP device on a bridge in a namespace of its own.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use nix::sys::signal::Signal;
use polis::curator::CURATOR_PORT;
use polis::launch::{LocalCluster, Machines};
use polis::netns::{within, ClusterNetwork};
use polis::owner::{escrow_over, first_use, Owner};
use polis::pki::generate_key;
use polis::poll::Poll;
use polis::proto::api::node_parameters::{Cluster, ClusterBootstrap, Network};
use polis::proto::api::NodeParameters;
use polis::proto::common::NodeState;
use polis::vm::{luks_uuid, make_disk, Vm, VmConfig};
use polis_integration::{test_logger, until_following, vm_image};
use prost::Message;

/// Generous: TCG on a shared 2-core machine. Waits end as soon as the line appears.
const STEP: Duration = Duration::from_secs(300);
const NODE0: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));

/// What the owner sees of a one-node cluster: the node's ID and state, and the register ticket
/// (a value kept in etcd on the data partition).
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    nodes: Vec<(String, i32)>,
    ticket: Vec<u8>,
}

/// Take ownership of the cluster node 0 bootstrapped (trust on first use of its CA), from inside
/// the VMs' namespace; answers the CA and the owner certificate.
fn take_ownership(net: &ClusterNetwork, owner_key: &SigningKey) -> (Vec<u8>, Vec<u8>) {
    owner_call(net, || async {
        let met = first_use(SocketAddr::new(NODE0, CURATOR_PORT), owner_key)
            .await
            .ok()?;
        let certificate = escrow_over(met.channel).await.ok()?;
        Some((met.ca, certificate))
    })
}

/// What the owner sees, once a Curator answers.
fn seen(net: &ClusterNetwork, owner_key: &SigningKey, ca: &[u8], certificate: &[u8]) -> Seen {
    owner_call(net, || async {
        let curator = first_use(SocketAddr::new(NODE0, CURATOR_PORT), owner_key)
            .await
            .ok()?
            .curator;
        let mut owner = Owner::connect(&curator, ca, owner_key, certificate.to_vec())
            .await
            .ok()?;
        let nodes = owner.nodes().await.ok()?;
        Some(Seen {
            nodes: nodes.into_iter().map(|n| (n.id, n.state)).collect(),
            ticket: owner.ticket().await.ok()?,
        })
    })
}

/// Retry `call` inside the VMs' network namespace until it answers (or [`STEP`] passes).
fn owner_call<T: Send, F, Fut>(net: &ClusterNetwork, call: F) -> T
where
    F: Fn() -> Fut + Send + Sync,
    Fut: std::future::Future<Output = Option<T>>,
{
    let namespace = net.nodes()[0].namespace.clone();
    within(&namespace, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Poll::new(Duration::from_millis(500), STEP)
            .until_blocking(|| rt.block_on(call()).ok_or(()))
            .unwrap_or_else(|()| panic!("no Curator answered the owner in {STEP:?}"))
    })
    .unwrap()
}

/// The test's directory; kept (and named on standard error) when POLIS_KEEP_VM_DIR is set, to
/// read the consoles after a failure.
fn test_dir() -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new();
    if std::env::var_os("POLIS_KEEP_VM_DIR").is_some() {
        dir.disable_cleanup(true);
    }
    let dir = dir.prefix("polis-vm").tempdir().unwrap();
    eprintln!("VM test directory: {}", dir.path().display());
    dir
}

fn bootstrap_parameters(owner_key: &SigningKey) -> Vec<u8> {
    NodeParameters {
        cluster: Some(Cluster::ClusterBootstrap(ClusterBootstrap {
            owner_public_key: owner_key.verifying_key().to_bytes().to_vec(),
            ..Default::default()
        })),
        network: Some(Network {
            interface: String::new(),
            address: format!("{NODE0}/24"),
            gateway: String::new(),
        }),
    }
    .encode_to_vec()
}

#[test]
fn one_vm_bootstraps_on_luks2_powers_off_and_rejoins_after_reboot_and_power_cut() {
    let log = test_logger();
    let dir = test_dir();
    let (kernel, initramfs) = vm_image(dir.path());
    let net = ClusterNetwork::create_for_vms(1).unwrap();
    let owner_key = generate_key().unwrap();
    let node_dir = dir.path().join("node0");
    std::fs::create_dir_all(&node_dir).unwrap();
    let config = VmConfig {
        dir: node_dir,
        kernel: kernel.image.clone(),
        initramfs,
        parameters: Some(bootstrap_parameters(&owner_key)),
        memory_mib: 1024,
        on_stop: "poweroff",
        pcr7_events: Vec::new(),
    };
    make_disk(&config.disk(), 1024).unwrap();
    let timer = Instant::now();
    let mut vm = Vm::boot(&net, 0, config.clone(), &log).unwrap();

    // 1. Bootstrap on a fresh LUKS2 volume.
    vm.wait_console("polis-node is process 1", STEP).unwrap();
    let booted = timer.elapsed();
    vm.wait_console("formatting a new data partition", STEP)
        .unwrap();
    vm.wait_console("data partition mounted", STEP).unwrap();
    let formatted = timer.elapsed();
    let (ca, certificate) = take_ownership(&net, &owner_key);
    let curator = timer.elapsed();
    let first = seen(&net, &owner_key, &ca, &certificate);
    assert_eq!(first.nodes.len(), 1, "{first:?}");
    assert_eq!(first.nodes[0].1, NodeState::Up as i32);
    let uuid = luks_uuid(&config.disk())
        .unwrap()
        .expect("a LUKS2 header on partition 2");
    slog::info!(log, "first boot under TCG"; "init_s" => booted.as_secs_f32(),
        "luks_mounted_s" => formatted.as_secs_f32(), "curator_s" => curator.as_secs_f32());

    // Power off through Ctrl-Alt-Del: the tree stops in order, the data is unmounted, the
    // mapping closed, and QEMU exits by itself.
    vm.ctrl_alt_del().unwrap();
    vm.wait_console("stopping the node", STEP).unwrap();
    vm.wait_console("the node's tree stopped in order", STEP)
        .unwrap();
    vm.wait_console("data partition unmounted and its mapping closed", STEP)
        .unwrap();
    vm.wait_console("the machine will power off now", STEP)
        .unwrap();
    assert!(vm.wait_exit(STEP).unwrap().success());
    assert!(!vm.console().contains("Kernel panic"), "{}", vm.tail());

    // 2. The same disk and TPM: the node joins by unsealing, opens the same volume.
    let mut vm = vm.boot_again(&net, 0, &log).unwrap();
    vm.wait_console("rejoining the cluster", STEP).unwrap();
    vm.wait_console("data partition mounted", STEP).unwrap();
    assert_eq!(seen(&net, &owner_key, &ca, &certificate), first);
    assert_eq!(
        luks_uuid(&config.disk()).unwrap().as_deref(),
        Some(uuid.as_str())
    );

    // 3. A power cut in steady state, then boot again: nothing lost.
    let mut vm = vm.boot_again(&net, 0, &log).unwrap();
    vm.wait_console("rejoining the cluster", STEP).unwrap();
    vm.wait_console("data partition mounted", STEP).unwrap();
    assert_eq!(seen(&net, &owner_key, &ca, &certificate), first);
    vm.power_cut();

    // 4. Another TPM for the same disk: the node refuses, the disk is not reformatted.
    std::fs::rename(config.tpm_state(), config.dir.join("tpm.original")).unwrap();
    let mut vm = vm.boot_again(&net, 0, &log).unwrap();
    let refusal = vm
        .wait_console("the node failed; the machine will", STEP)
        .unwrap();
    assert!(
        vm.console().contains("TPM"),
        "the console names the TPM: {refusal}\n{}",
        vm.tail()
    );
    vm.wait_exit(STEP).unwrap();
    assert!(!vm.console().contains("formatting a new data partition"));
    assert_eq!(
        luks_uuid(&config.disk()).unwrap().as_deref(),
        Some(uuid.as_str())
    );
}

/// Wait until node `i`'s Curator lists two UP consensus members.
async fn two_members_up(cluster: &LocalCluster, i: usize) {
    cluster
        .until(i, "list two UP consensus members", || async {
            let nodes = cluster.owner(i).await.ok()?.nodes().await.ok()?;
            let members = nodes.iter().filter(|n| {
                n.state == NodeState::Up as i32
                    && n.roles
                        .as_ref()
                        .is_some_and(|r| r.consensus_member.is_some())
            });
            (members.count() == 2).then_some(())
        })
        .await
        .unwrap()
}

/// Node `i`'s console so far.
fn console_of(cluster: &LocalCluster, i: usize) -> String {
    std::fs::read_to_string(cluster.nodes[i].log_file()).unwrap_or_default()
}

/// Node 1 (a worker yet: node 0 alone holds quorum) powers off, gets a firmware update that
/// changes its PCR 7 at every boot from now on (issue 13 §2), and boots: as process 1, through
/// the kernel's TPM device, it says so on its console and waits, locked, until the owner
/// approves the value it asks for (signed by its TPM's recovery key), then unseals and follows
/// its record again.
async fn pcr7_changes_and_the_owner_approves(cluster: &mut LocalCluster, id: &str) {
    cluster.stop(1, Signal::SIGTERM);
    cluster.extend_pcr7(1, b"a firmware update").unwrap();
    cluster.start(1, &[]).unwrap();
    let requested = cluster
        .until(1, "ask for its new PCR 7 value's approval", || async {
            let requests = cluster.owner(0).await.ok()?.pcr_requests().await.ok()?;
            let request = requests.into_iter().find(|r| r.id == id && !r.refused)?;
            Some(request.requested_pcr7)
        })
        .await
        .unwrap();
    // The console holds this boot only.
    let console = console_of(cluster, 1);
    assert!(
        console.contains("test hook: extending PCR 7")
            && console.contains("PCR 7 changed since this node enrolled")
            && !console.contains("rejoining the cluster"),
        "{console}"
    );
    let mut owner = cluster.owner(0).await.unwrap();
    owner.decide_pcr(id, &requested, true).await.unwrap();
    until_following(cluster, 1).await;
}

/// Two VMs: node 1 registers into node 0's cluster over the bridge, recovers from a PCR 7
/// change with the owner's approval, and becomes a consensus member; both power off in order
/// and boot again (node 1 with its changed PCR 7), and the cluster comes back (a cold start:
/// no Curator answers until etcd has quorum again).
#[test]
fn two_vms_form_a_cluster_and_come_back_after_both_power_off() {
    let log = test_logger();
    let dir = test_dir();
    let (kernel, initramfs) = vm_image(dir.path());
    let machines = Machines::Vms {
        kernel: kernel.image,
        initramfs,
    };
    // This thread joins the VMs' namespace; the runtime's connections are made from it.
    let mut cluster = LocalCluster::create_with(dir.path(), 2, machines, log).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let owner = cluster.bootstrap().await.unwrap();
        let node = cluster.start_registration(1, &owner).await.unwrap();
        cluster.approve(1, &owner, &node).await.unwrap();
        let id = node.id;
        until_following(&cluster, 1).await;
        pcr7_changes_and_the_owner_approves(&mut cluster, &id).await;
        cluster.make_consensus_member(1, &owner, &id).await.unwrap();
        assert_eq!(cluster.nodes[1].id().as_deref(), Some(id.as_str()));
        two_members_up(&cluster, 0).await;
        // Fault injection through node 1's debug port (the relay presents the node's token),
        // once node 1 runs its Curator (it starts once its etcd member is ready).
        let kill = r#"{"path":"/cluster/curator","how":"crash"}"#;
        cluster
            .until(1, "run its Curator", || async {
                cluster.debug(1, "POST", "/debug/kill", kill).ok()
            })
            .await
            .unwrap();
        cluster
            .until(1, "restart its Curator", || async {
                let tree = cluster.debug(1, "GET", "/debug/tree", "").ok()?;
                let tree: Vec<serde_json::Value> = serde_json::from_str(&tree).ok()?;
                tree.iter()
                    .any(|a| {
                        a["path"] == "/cluster/curator"
                            && a["generation"] == 2
                            && a["state"] == "healthy"
                    })
                    .then_some(())
            })
            .await
            .unwrap();
    });
    for i in [1, 0] {
        cluster.stop(i, Signal::SIGTERM);
        let console = std::fs::read_to_string(cluster.nodes[i].log_file()).unwrap();
        assert!(
            console.contains("the machine will power off now"),
            "node {i}"
        );
    }
    cluster.start(0, &[]).unwrap();
    cluster.start(1, &[]).unwrap();
    rt.block_on(async {
        two_members_up(&cluster, 0).await;
        two_members_up(&cluster, 1).await;
    });
}
