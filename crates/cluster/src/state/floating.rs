//! The cluster's floating service address: one address, with its prefix
//! length and the interface it goes on, that one healthy data node holds at
//! a time, for initiators that neither use multipath nor follow login
//! redirections. Which node holds it is [`super::ClusterState::floating_holder`];
//! the leader assigns it (`crate::floating`), the holder adds it to its
//! interface only while its lease runs (`node`'s `clustered::floating`).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::Refusal;

/// Longest interface name Linux takes (`IFNAMSIZ` less the terminating nul).
const MAX_INTERFACE: usize = 15;

/// The floating address as configured: the same on every data node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloatingAddress {
    /// Address and prefix length, as `ip addr` takes it: `10.0.0.50/24`.
    pub address: String,
    /// Network interface the holder adds it to, as `eth0`.
    pub interface: String,
}

impl FloatingAddress {
    /// Checks the address (an IP address with a prefix length that fits it)
    /// and the interface name (what Linux takes as one).
    pub fn check(&self) -> Result<(), Refusal> {
        let bad_address = || Refusal::BadFloatingAddress {
            address: self.address.clone(),
        };
        let (ip, prefix) = self.address.split_once('/').ok_or_else(bad_address)?;
        let ip: IpAddr = ip.parse().map_err(|_| bad_address())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad_address())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if prefix > max || ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
            return Err(bad_address());
        }
        let name_ok = (1..=MAX_INTERFACE).contains(&self.interface.len())
            && self
                .interface
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
            && !self.interface.starts_with('-')
            && self.interface != "."
            && self.interface != "..";
        if !name_ok {
            return Err(Refusal::BadInterface {
                interface: self.interface.clone(),
            });
        }
        Ok(())
    }

    /// The address without its prefix length.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.split_once('/')?.0.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(address: &str, interface: &str) -> FloatingAddress {
        FloatingAddress {
            address: address.into(),
            interface: interface.into(),
        }
    }

    #[test]
    fn takes_addresses_with_a_prefix_and_interface_names() {
        assert_eq!(f("10.0.0.50/24", "eth0").check(), Ok(()));
        assert_eq!(f("fd00::50/64", "br-lan.100").check(), Ok(()));
        assert_eq!(f("10.0.0.50/24", "eth0").ip(), Some([10, 0, 0, 50].into()));
    }

    #[test]
    fn refuses_what_ip_addr_would_not_take() {
        for a in [
            "10.0.0.50",
            "10.0.0.50/33",
            "fd00::1/129",
            "x/24",
            "0.0.0.0/0",
            "127.0.0.2/8",
            "224.0.0.1/4",
            "10.0.0.50/-1",
        ] {
            assert!(
                matches!(
                    f(a, "eth0").check(),
                    Err(Refusal::BadFloatingAddress { .. })
                ),
                "{a}"
            );
        }
        for i in [
            "",
            "a-name-over-15-chars",
            "eth 0",
            "eth0:1",
            "../x",
            "..",
            "-x",
        ] {
            assert!(
                matches!(
                    f("10.0.0.50/24", i).check(),
                    Err(Refusal::BadInterface { .. })
                ),
                "{i:?}"
            );
        }
    }
}
