//! The network actor: the node's external address as a watchable value. Static from
//! configuration, or read from an interface (getifaddrs, which asks the kernel over netlink) and
//! re-read every second, publishing each change.

use std::net::IpAddr;
use std::time::Duration;

use polis_actors::{Actor, Ctx, Failure, Started, Watchable};

/// How often an interface's addresses are re-read.
const POLL: Duration = Duration::from_secs(1);

/// What the rest of the node knows about its network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkStatus {
    /// The address other nodes reach this one at, once known.
    pub external_address: Option<IpAddr>,
}

/// The external address in `status`, once the network actor knows it; `log` says when it has
/// to wait. Never returns if the value can no longer change (the caller is then being stopped).
pub async fn external_address(status: &Watchable<NetworkStatus>, log: &slog::Logger) -> IpAddr {
    let mut status = status.subscribe();
    loop {
        if let Some(address) = status.borrow_and_update().external_address {
            return address;
        }
        slog::info!(log, "waiting for an external address");
        if status.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Where the external address comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressSource {
    /// Fixed by configuration.
    Static(IpAddr),
    /// The first IPv4 address (else IPv6) of this interface.
    Interface(String),
}

/// The network actor.
pub struct Network {
    source: AddressSource,
    status: Watchable<NetworkStatus>,
}

impl Network {
    /// Publish the address from `source` into `status`.
    pub fn new(source: AddressSource, status: Watchable<NetworkStatus>) -> Self {
        Network { source, status }
    }
}

impl Actor for Network {
    fn started(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<Started, Failure> {
        self.publish(ctx);
        if matches!(self.source, AddressSource::Interface(_)) {
            ctx.run_interval(POLL, |network, ctx| {
                network.publish(ctx);
                Ok(())
            });
        }
        Ok(Started::Healthy)
    }
}

impl Network {
    fn publish(&self, ctx: &mut Ctx<'_, Self>) {
        let address = match &self.source {
            AddressSource::Static(ip) => Some(*ip),
            AddressSource::Interface(name) => interface_address(name),
        };
        if self.status.get().external_address != address {
            slog::info!(ctx.log(), "external address"; "address" => ?address);
        }
        self.status.set(NetworkStatus {
            external_address: address,
        });
    }
}

/// The first IPv4 address of `interface`, else its first IPv6 one.
fn interface_address(interface: &str) -> Option<IpAddr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    let mut found: Vec<IpAddr> = addrs
        .filter(|a| a.interface_name == interface)
        .filter_map(|a| {
            let addr = a.address?;
            addr.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect();
    found.sort_by_key(|ip| ip.is_ipv6());
    found.first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_its_address() {
        assert_eq!(interface_address("lo"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(interface_address("no-such-interface0"), None);
    }
}
