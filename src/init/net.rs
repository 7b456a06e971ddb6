//! The external interface of a node that is its machine's init: brought up with the address its
//! node parameters give, over netlink. There is no DHCP; no address is a clear error.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::proto::api::node_parameters::Network;

/// Why the network could not be configured, naming the interface or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum NetConfigError {
    /// The node parameters have no `network` field.
    #[error("the node parameters give no network configuration (NodeParameters.network): a node that is its machine's init needs its address")]
    Missing,
    /// The node parameters could not be read.
    #[error("cannot read the node parameters for the network configuration: {0}")]
    Parameters(String),
    /// The address is not `IP/prefix`.
    #[error("network address {0:?} is not an address with a prefix length, such as 198.18.0.2/24")]
    BadAddress(String),
    /// The gateway is not an IP address.
    #[error("network gateway {0:?} is not an IP address")]
    BadGateway(String),
    /// The interface does not exist (yet).
    #[error("no network interface {0}")]
    NoInterface(String),
    /// Netlink refused.
    #[error("netlink: {op}: {reason}")]
    Netlink {
        /// What was being done.
        op: String,
        /// The kernel's answer.
        reason: String,
    },
}

/// The parsed network configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The interface, or `None` for the first non-loopback one.
    pub interface: Option<String>,
    /// The address.
    pub address: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// The default gateway.
    pub gateway: Option<IpAddr>,
}

impl NetConfig {
    /// Check the parameters' network field.
    pub fn from_parameters(network: Option<&Network>) -> Result<NetConfig, NetConfigError> {
        let network = network.ok_or(NetConfigError::Missing)?;
        let bad = || NetConfigError::BadAddress(network.address.clone());
        let (ip, prefix) = network.address.split_once('/').ok_or_else(bad)?;
        let address: IpAddr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > if address.is_ipv4() { 32 } else { 128 } {
            return Err(bad());
        }
        let gateway = match network.gateway.as_str() {
            "" => None,
            g => Some(
                g.parse()
                    .map_err(|_| NetConfigError::BadGateway(g.into()))?,
            ),
        };
        Ok(NetConfig {
            interface: (!network.interface.is_empty()).then(|| network.interface.clone()),
            address,
            prefix,
            gateway,
        })
    }
}

/// Bring up loopback and the external interface with `config`; answers the interface's name.
/// An interface that is not there yet (its driver still probing) is [`NetConfigError::NoInterface`]:
/// the caller may wait and try again. Addresses already present are kept.
pub async fn configure(config: &NetConfig) -> Result<String, NetConfigError> {
    let netlink = |op: &str| {
        let op = op.to_owned();
        move |e: rtnetlink::Error| NetConfigError::Netlink {
            op,
            reason: e.to_string(),
        }
    };
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| NetConfigError::Netlink {
            op: "open a netlink socket".into(),
            reason: e.to_string(),
        })?;
    let task = tokio::spawn(connection);
    let result = async {
        let links: Vec<LinkMessage> = handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(netlink("list links"))?;
        let mut named: Vec<(String, u32)> = links
            .iter()
            .filter_map(|l| {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(name) => Some((name.clone(), l.header.index)),
                    _ => None,
                })
            })
            .collect();
        named.sort();
        if let Some((_, lo)) = named.iter().find(|(n, _)| n == "lo") {
            set_up(&handle, *lo).await.map_err(netlink("bring up lo"))?;
        }
        let (name, index) = match &config.interface {
            Some(want) => named.iter().find(|(n, _)| n == want),
            None => named.iter().find(|(n, _)| n != "lo"),
        }
        .cloned()
        .ok_or_else(|| {
            NetConfigError::NoInterface(
                config
                    .interface
                    .clone()
                    .unwrap_or_else(|| "other than lo".into()),
            )
        })?;
        match handle
            .address()
            .add(index, config.address, config.prefix)
            .execute()
            .await
        {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_eexist() => {}
            Err(e) => {
                return Err(netlink(&format!(
                    "add {}/{} to {name}",
                    config.address, config.prefix
                ))(e))
            }
        }
        set_up(&handle, index)
            .await
            .map_err(netlink(&format!("bring up {name}")))?;
        if let Some(gateway) = config.gateway {
            let route = match gateway {
                IpAddr::V4(gw) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                    .gateway(gw)
                    .build(),
                IpAddr::V6(gw) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                    .gateway(gw)
                    .build(),
            };
            match handle.route().add(route).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_eexist() => {}
                Err(e) => return Err(netlink(&format!("add the default route via {gateway}"))(e)),
            }
        }
        Ok(name)
    }
    .await;
    task.abort();
    result
}

async fn set_up(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
}

fn libc_eexist() -> i32 {
    nix::errno::Errno::EEXIST as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(address: &str, gateway: &str) -> Network {
        Network {
            interface: String::new(),
            address: address.into(),
            gateway: gateway.into(),
        }
    }

    #[test]
    fn parameters_are_checked_and_named_when_wrong() {
        let ok = NetConfig::from_parameters(Some(&network("198.18.0.2/24", "198.18.0.1"))).unwrap();
        assert_eq!(
            (ok.address.to_string(), ok.prefix),
            ("198.18.0.2".into(), 24)
        );
        assert_eq!(ok.gateway, Some("198.18.0.1".parse().unwrap()));
        assert_eq!(ok.interface, None);
        assert!(matches!(
            NetConfig::from_parameters(None),
            Err(NetConfigError::Missing)
        ));
        for bad in ["198.18.0.2", "198.18.0.2/33", "nonsense/24"] {
            let err = NetConfig::from_parameters(Some(&network(bad, ""))).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
        assert!(matches!(
            NetConfig::from_parameters(Some(&network("198.18.0.2/24", "gw"))),
            Err(NetConfigError::BadGateway(_))
        ));
    }
}
