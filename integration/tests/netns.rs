//! The cluster network harness: guard route, bridge, per-node namespaces with reachability only
//! between nodes, processes with known real PIDs and their own hostnames, and clean removal.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::thread;

use polis::netns::{within, ClusterNetwork, BRIDGE_ADDRESS, GUARD_RANGE};
use polis::process::ChildProcess;

fn ip(args: &[&str]) -> String {
    String::from_utf8(Command::new("ip").args(args).output().unwrap().stdout).unwrap()
}

#[test]
fn nodes_reach_each_other_only_through_the_bridge_and_vanish_when_dropped() {
    let net = ClusterNetwork::create(2).unwrap();
    assert!(ip(&["route", "show", GUARD_RANGE]).starts_with("unreachable 198.18.0.0/15"));
    assert!(
        ip(&["addr", "show", "dev", net.bridge()]).contains(&format!("inet {BRIDGE_ADDRESS}/24"))
    );
    for node in net.nodes() {
        assert!(ip(&["route", "get", &node.address.to_string()])
            .contains(&format!("dev {}", net.bridge())));
        assert_eq!(
            ip(&["-n", &node.namespace, "route", "show", "default"]),
            "",
            "no way out of {}",
            node.namespace
        );
    }
    let (a, b) = (net.nodes()[0].clone(), net.nodes()[1].clone());

    // b listens on its address; a connects to it across the bridge.
    let listener = within(&b.namespace, || {
        TcpListener::bind((b.address, 7835)).unwrap()
    })
    .unwrap();
    let server = thread::spawn(move || {
        let (mut conn, from) = listener.accept().unwrap();
        conn.write_all(b"hello").unwrap();
        from
    });
    let reply = within(&a.namespace, || {
        let mut stream = TcpStream::connect((b.address, 7835)).unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply
    })
    .unwrap();
    assert_eq!(reply, "hello");
    assert_eq!(server.join().unwrap().ip(), std::net::IpAddr::V4(a.address));

    // A node's loopback is its own: the host's listeners are not there.
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let reached = within(&a.namespace, || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .unwrap();
    assert!(!reached, "a node reached the host's loopback");

    let names: Vec<String> = net.nodes().iter().map(|n| n.namespace.clone()).collect();
    let bridge = net.bridge().to_owned();
    drop(net);
    let listed = ip(&["netns", "list"]);
    assert!(
        names.iter().all(|n| !listed.contains(n.as_str())),
        "{listed}"
    );
    assert!(!ip(&["link", "show"]).contains(&bridge));
}

#[test]
fn namespaced_processes_have_a_known_pid_their_own_hostname_and_hosts_file() {
    let net = ClusterNetwork::create(1).unwrap();
    let namespace = net.nodes()[0].namespace.clone();
    let etc = std::path::Path::new("/etc/netns").join(&namespace);
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("hosts"), "198.18.0.2 node-0\n").unwrap();
    let host_hosts = std::fs::read_to_string("/etc/hosts").unwrap();

    // A process that names itself, as `polis-node --set-hostname` does, names only its node, and
    // its `/etc/hosts` is its node's, as under `ip netns exec`.
    let out = net
        .command(
            0,
            "/bin/sh".as_ref(),
            &[
                "-c".into(),
                "hostname node-0 && cat /proc/sys/kernel/hostname /etc/hosts".into(),
            ],
        )
        .unwrap()
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "node-0\n198.18.0.2 node-0\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        nix::unistd::gethostname().unwrap(),
        "node-0",
        "the host keeps its name"
    );
    assert_eq!(
        std::fs::read_to_string("/etc/hosts").unwrap(),
        host_hosts,
        "the bind mount stays in the node's mount namespace"
    );

    let log = slog::Logger::root(slog::Discard, slog::o!());
    let child = ChildProcess::spawn(
        net.command(0, "/bin/sleep".as_ref(), &["300".into()])
            .unwrap(),
        "sleep",
        &log,
    )
    .unwrap();
    let pid = child.pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(
        comm.trim(),
        "sleep",
        "the PID spawn answers is the program's"
    );
    let inode = |path: String| std::fs::metadata(path).unwrap().ino();
    assert_eq!(
        inode(format!("/proc/{pid}/ns/net")),
        inode(format!("/var/run/netns/{namespace}")),
        "it runs in its node's network namespace"
    );
    drop(child);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/comm")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    );
    std::fs::remove_dir_all(&etc).unwrap();
}
