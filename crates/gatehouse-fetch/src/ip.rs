//! Which IP addresses an outbound fetch must never reach.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub(crate) fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "\"this network\" (0.0.0.0/8)",
        (10, _, _) => "private (10/8)",
        (100, 64..=127, _) => "carrier-grade NAT (100.64/10)",
        (127, _, _) => "loopback",
        (169, 254, _) => "link-local / cloud metadata (169.254/16)",
        (172, 16..=31, _) => "private (172.16/12)",
        (192, 0, 0) => "IETF protocol assignment (192.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (192, 88, 99) => "6to4 relay anycast",
        (192, 168, _) => "private (192.168/16)",
        (198, 18..=19, _) => "benchmarking (198.18/15)",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved or broadcast",
        _ => return None,
    })
}

/// `None` for a public unicast address, else why it is refused.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        // An IPv4-mapped address reaches the IPv4 host: judge it as IPv4.
        return v4_reason(v4);
    }
    let s = ip.segments();
    Some(match s[0] {
        // IPv4-compatible (deprecated) ::a.b.c.d
        0 if s[1..6].iter().all(|x| *x == 0) => "IPv4-compatible",
        0x64 if s[1] == 0xff9b => {
            // NAT64 well-known prefix embeds an IPv4 address in the last 32 bits.
            let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
            return v4_reason(v4).map(|_| "NAT64 to a forbidden IPv4");
        }
        0x100 if s[1..4].iter().all(|x| *x == 0) => "discard-only (100::/64)",
        0x2001 if s[1] == 0 => "Teredo (2001::/32)",
        0x2001 if s[1] == 0xdb8 => "documentation (2001:db8::/32)",
        0x2002 => "6to4 (2002::/16)",
        x if x & 0xfe00 == 0xfc00 => "unique-local (fc00::/7)",
        x if x & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        x if x & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        x if x & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        for (ip, forbidden) in [
            ("8.8.8.8", false),
            ("1.1.1.1", false),
            ("2606:4700::1111", false),
            ("127.0.0.1", true),
            ("127.255.0.9", true),
            ("10.0.0.1", true),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("172.32.0.1", false),
            ("192.168.1.1", true),
            ("169.254.169.254", true),
            ("100.64.0.1", true),
            ("100.128.0.1", false),
            ("0.0.0.0", true),
            ("224.0.0.1", true),
            ("255.255.255.255", true),
            ("::", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:a9fe:a9fe", true),
            ("::ffff:10.0.0.1", true),
            ("::ffff:8.8.8.8", false),
            ("::127.0.0.1", true),
            ("fc00::1", true),
            ("fd00:ec2::254", true),
            ("fe80::1", true),
            ("ff02::1", true),
            ("64:ff9b::a9fe:a9fe", true),
            ("64:ff9b::808:808", false),
            ("2002:a9fe:a9fe::", true),
        ] {
            let parsed: IpAddr = ip.parse().expect("test IP");
            assert_eq!(forbidden_reason(parsed).is_some(), forbidden, "{ip}");
        }
    }

    proptest! {
        #[test]
        fn private_v4_never_public_in_any_form(a in prop_oneof![Just(10u8), Just(127u8), Just(0u8)], b: u8, c: u8, d: u8) {
            let v4 = Ipv4Addr::new(a, b, c, d);
            prop_assert!(forbidden_reason(IpAddr::V4(v4)).is_some());
            prop_assert!(forbidden_reason(IpAddr::V6(v4.to_ipv6_mapped())).is_some());
        }

        #[test]
        fn rfc1918_172_and_192(b in 16u8..=31, c: u8, d: u8) {
            prop_assert!(forbidden_reason(IpAddr::V4(Ipv4Addr::new(172, b, c, d))).is_some());
            prop_assert!(forbidden_reason(IpAddr::V4(Ipv4Addr::new(192, 168, c, d))).is_some());
            prop_assert!(forbidden_reason(IpAddr::V4(Ipv4Addr::new(169, 254, c, d))).is_some());
        }
    }
}
