//! etcd members as peers (name, host, port): the one place their peer URLs and the
//! `--initial-cluster` flag are spelled, and peer URLs read back from etcd's member list.

pub use crate::proto::common::node_roles::consensus_member::Peer;

/// The URL other members reach a member at: `https://host:port` (an IPv6 host in brackets).
pub fn peer_url(host: &str, port: u16) -> String {
    format!("https://{host}:{port}")
}

/// The peer named `name` whose peer URL is `url`, if `url` is `https://host:port` and neither
/// name nor host holds a character that would change the meaning of an `--initial-cluster`
/// flag (`,`, `=`, `/`, whitespace or control characters): etcd's member list is read back
/// into the flag a joining member starts with.
pub fn parse(name: &str, url: &str) -> Option<Peer> {
    let (host, port_text) = url.strip_prefix("https://")?.rsplit_once(':')?;
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && !",=/".contains(c))
    };
    let port: u16 = port_text.parse().ok()?;
    // As written, so that the flag spells the URL etcd knows.
    let canonical = port.to_string() == port_text;
    (plain(name) && plain(host) && canonical).then(|| Peer {
        name: name.to_owned(),
        host: host.to_owned(),
        port: i32::from(port),
    })
}

/// The `--initial-cluster` value naming `peers`: `name=url,…`.
pub fn initial_cluster(peers: &[Peer]) -> String {
    peers
        .iter()
        .map(|p| {
            let port = u16::try_from(p.port).unwrap_or_default();
            format!("{}={}", p.name, peer_url(&p.host, port))
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_round_trip_through_their_urls_and_odd_ones_are_refused() {
        let a = parse("metropolis-a", "https://198.18.0.2:7834").unwrap();
        let b = parse("metropolis-b", "https://[fd00::3]:7834").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("198.18.0.2", 7834));
        assert_eq!(b.host, "[fd00::3]");
        assert_eq!(
            initial_cluster(&[a.clone(), b]),
            "metropolis-a=https://198.18.0.2:7834,metropolis-b=https://[fd00::3]:7834"
        );
        assert_eq!(parse(&a.name, &peer_url(&a.host, 7834)), Some(a));
        for (name, url) in [
            ("a", "http://198.18.0.2:7834"),
            ("a", "https://198.18.0.2"),
            ("a", "https://198.18.0.2:07834"),
            ("a", "https://198.18.0.2:70000"),
            ("a,b=c", "https://198.18.0.2:7834"),
            ("a", "https://x,b=https://y:7834"),
            ("", "https://198.18.0.2:7834"),
        ] {
            assert_eq!(parse(name, url), None, "{name} {url}");
        }
    }
}
