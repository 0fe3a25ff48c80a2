//! Which network addresses a tool call may connect to. Private, loopback,
//! link-local (cloud metadata), shared-address and other special ranges are
//! refused unless the project allow-lists them. The check runs on the resolved
//! addresses at connect time (a reqwest resolver), so a name that resolves to a
//! public address at registration and to a private one later (DNS rebinding)
//! is still refused; literal IP hosts are checked before the request is sent.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, LazyLock},
};

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Policy {
    /// Every address is allowed (development).
    pub allow_all: bool,
    /// Special-purpose networks this project may reach anyway.
    pub allowlist: Vec<IpNet>,
}

/// Networks no tool reaches by default.
const BLOCKED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "64:ff9b::/96",
    "2002::/16",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// Cloud metadata endpoints (AWS, GCP, Azure, OpenStack: 169.254.169.254; ECS and
/// EKS: 169.254.170.2 and .23; AWS over IPv6: fd00:ec2::254 and ::23; Alibaba:
/// 100.100.100.200). They hand out the host's own credentials, so no setting opens
/// them: not `allow_private_upstreams`, not a project's allow-list.
const METADATA: &[&str] = &[
    "169.254.169.254/32",
    "169.254.170.2/32",
    "169.254.170.23/32",
    "100.100.100.200/32",
    "fd00:ec2::254/128",
    "fd00:ec2::23/128",
];

/// The networks of a list, parsed once (every connection a worker makes is checked).
fn parsed(nets: &[&str]) -> Vec<IpNet> {
    nets.iter().filter_map(|net| net.parse().ok()).collect()
}

static BLOCKED_NETS: LazyLock<Vec<IpNet>> = LazyLock::new(|| parsed(BLOCKED));
static METADATA_NETS: LazyLock<Vec<IpNet>> = LazyLock::new(|| parsed(METADATA));

fn in_any(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|net| net.contains(&ip))
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn blocked(ip: IpAddr) -> bool {
    in_any(&BLOCKED_NETS, unmapped(ip))
}

impl Policy {
    /// A project's policy: `allow_all` from the deployment, its outbound
    /// allow-list (entries that are not networks are ignored; the admin API
    /// refuses them when they are set).
    pub fn for_project(allow_all: bool, allowlist: &[String]) -> Self {
        Self {
            allow_all,
            allowlist: allowlist.iter().filter_map(|n| n.parse().ok()).collect(),
        }
    }

    /// A URL whose host is a literal IP never goes through [`PolicyResolver`]:
    /// that address is checked here (a refusal says why).
    pub fn check_literal_host(&self, url: &url::Url) -> Result<(), String> {
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(()),
        };
        if self.permits(literal) {
            Ok(())
        } else {
            Err(Self::refusal(literal))
        }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = unmapped(ip);
        !in_any(&METADATA_NETS, ip)
            && (self.allow_all || !blocked(ip) || self.allowlist.iter().any(|net| net.contains(&ip)))
    }

    pub fn refusal(ip: IpAddr) -> String {
        if in_any(&METADATA_NETS, unmapped(ip)) {
            return format!("the API's address {ip} is a cloud metadata endpoint, which no tool may reach");
        }
        format!(
            "the API's address {ip} is in a private or special-purpose network; \
             allow-list it in the project's outbound_allowlist if the tool should reach it"
        )
    }
}

/// Resolves with the system resolver and keeps only permitted addresses.
pub struct PolicyResolver {
    pub policy: Arc<Policy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (allowed, refused): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|a| policy.permits(a.ip()));
            if allowed.is_empty() {
                let reason = refused
                    .first()
                    .map_or_else(|| format!("`{host}` did not resolve"), |a| Policy::refusal(a.ip()));
                return Err(Box::new(Refused(reason)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// A connection refused by the address policy.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_ranges_are_refused_unless_allow_listed() {
        let policy = Policy::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "192.168.1.1",
            "::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
        ] {
            assert!(!policy.permits(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111"] {
            assert!(policy.permits(ip.parse().expect("ip")), "{ip}");
        }
        let allowed = Policy {
            allow_all: false,
            allowlist: vec!["10.1.0.0/16".parse().expect("net")],
        };
        assert!(allowed.permits("10.1.2.3".parse().expect("ip")));
        assert!(!allowed.permits("10.2.0.1".parse().expect("ip")));
    }

    /// Cloud metadata endpoints hand out the host's credentials: no setting opens
    /// them, not `allow_private_upstreams` (development) nor a project's allow-list.
    #[test]
    fn metadata_endpoints_are_refused_whatever_the_settings() {
        // A typo would drop a network silently: every entry parses.
        assert_eq!(BLOCKED_NETS.len(), BLOCKED.len());
        assert_eq!(METADATA_NETS.len(), METADATA.len());
        let open = Policy {
            allow_all: true,
            allowlist: vec!["0.0.0.0/0".parse().expect("net"), "::/0".parse().expect("net")],
        };
        for ip in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "169.254.170.2",
            "fd00:ec2::254",
            "100.100.100.200",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(!open.permits(ip), "{ip}");
            assert!(Policy::refusal(ip).contains("metadata"), "{}", Policy::refusal(ip));
        }
        assert!(open.permits("169.254.1.1".parse().expect("ip")));
        assert!(open.permits("127.0.0.1".parse().expect("ip")));
        let literal = url::Url::parse("http://[::ffff:a9fe:a9fe]/latest").expect("url");
        assert!(open.check_literal_host(&literal).is_err());
    }
}
