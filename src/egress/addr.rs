//! Addresses the door never reaches on its own (loopback, private, link-local, multicast, unspecified, cloud metadata, and their IPv6 embeddings), and IP literals read the way the system's resolver reads them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused, or `None` when it is an ordinary public one.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    // Cloud metadata first: it sits inside the link-local and shared ranges, and its own
    // name tells the model more.
    const METADATA: [Ipv4Addr; 3] = [
        Ipv4Addr::new(169, 254, 169, 254), // AWS, GCP, Azure, OpenStack, DigitalOcean
        Ipv4Addr::new(100, 100, 100, 200), // Alibaba Cloud
        Ipv4Addr::new(192, 0, 0, 192),     // Oracle Cloud
    ];
    const RANGES: [([u8; 4], u32, &str); 14] = [
        ([0, 0, 0, 0], 8, "an unspecified (this-network) address"),
        ([127, 0, 0, 0], 8, "a loopback address"),
        ([10, 0, 0, 0], 8, "a private address"),
        ([172, 16, 0, 0], 12, "a private address"),
        ([192, 168, 0, 0], 16, "a private address"),
        ([100, 64, 0, 0], 10, "a shared (carrier-grade NAT) address"),
        ([169, 254, 0, 0], 16, "a link-local address"),
        ([192, 0, 0, 0], 24, "an IETF protocol address"),
        ([192, 0, 2, 0], 24, "a documentation address"),
        ([198, 18, 0, 0], 15, "a benchmarking address"),
        ([198, 51, 100, 0], 24, "a documentation address"),
        ([203, 0, 113, 0], 24, "a documentation address"),
        ([224, 0, 0, 0], 4, "a multicast address"),
        ([240, 0, 0, 0], 4, "a reserved or broadcast address"),
    ];
    if METADATA.contains(&ip) {
        return Some("a cloud metadata address");
    }
    RANGES
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    // Forms that carry an IPv4 address are judged by that address: mapped (::ffff:a.b.c.d),
    // compatible (::a.b.c.d), NAT64's well-known prefix (64:ff9b::/96) and 6to4 (2002::/16).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    let low_v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0; 6] {
        return forbidden_v4(low_v4).or(Some("an IPv4-compatible address"));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // A public IPv4 address behind NAT64 is as reachable as itself.
        return forbidden_v4(low_v4);
    }
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return forbidden_v4(v4);
    }
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Some("a cloud metadata address");
    }
    const RANGES: [(u16, u16, &str); 8] = [
        // (first segment, mask of the first segment, why)
        (0x0064, 0xffff, "a NAT64 address"), // 64:ff9b:1::/48, local-use NAT64
        (0x0100, 0xffff, "a discard-only address"),
        (0xfc00, 0xfe00, "a private (unique local) address"),
        (0xfe80, 0xffc0, "a link-local address"),
        (0xfec0, 0xffc0, "a site-local address"),
        (0xff00, 0xff00, "a multicast address"),
        (0x2001, 0xffff, "a special-purpose address"), // Teredo, documentation, ORCHID…
        (0x0000, 0xffff, "a reserved address"),
    ];
    if s[0] == 0x2001 && s[1] >= 0x0200 && s[1] != 0x0db8 {
        // 2001:200::/23 and above is ordinary unicast; 2001:0000::/23 is special-purpose.
        return None;
    }
    RANGES
        .iter()
        .find(|(first, mask, _)| s[0] & mask == *first)
        .map(|(_, _, why)| *why)
}

/// The IP address a host as written in a request stands for, when it is an IP literal
/// rather than a name: IPv6 in brackets (or bare), and IPv4 in every spelling `inet_aton`
/// (and so `getaddrinfo`) accepts: one to four parts, each decimal, octal (leading `0`) or
/// hex (`0x`), the last part filling the remaining bytes (`127.1`, `2130706433`,
/// `0x7f.0.0.1`, `0177.0.0.1`).
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(v6) = host.parse::<Ipv6Addr>() {
        return Some(IpAddr::V6(v6));
    }
    inet_aton(host).map(IpAddr::V4)
}

/// Whether a host looks like an address the resolver might still read some way (digits,
/// dots, `x` and hex letters only, or anything with a `:`) without being one we can parse:
/// such hosts are refused rather than handed to a resolver whose reading we cannot predict.
pub fn looks_numeric(host: &str) -> bool {
    host.contains(':')
        || host.contains('[')
        || (!host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b'x' || b == b'X')
            && host
                .split('.')
                .next_back()
                .is_some_and(|last| last.bytes().next().is_some_and(|b| b.is_ascii_digit())))
}

fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    if s.is_empty() {
        return None;
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for part in &parts {
        values.push(aton_part(part)?);
    }
    let (last, head) = values.split_last()?;
    if head.iter().any(|v| *v > 0xff) {
        return None;
    }
    let rest_bits = 8 * (4 - head.len() as u32);
    if rest_bits < 32 && *last >= 1u64 << rest_bits {
        return None;
    }
    if *last > u32::MAX as u64 {
        return None;
    }
    let mut addr: u32 = 0;
    for (i, v) in head.iter().enumerate() {
        addr |= (*v as u32) << (24 - 8 * i as u32);
    }
    Some(Ipv4Addr::from(addr | *last as u32))
}

fn aton_part(part: &str) -> Option<u64> {
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        // "0x" alone is 0 to inet_aton.
        return (radix == 16).then_some(0);
    }
    if digits.len() > 12 {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }

    #[test]
    fn every_spelling_of_loopback_is_read_as_the_resolver_reads_it() {
        for spelling in [
            "127.0.0.1",
            "127.1",
            "127.0.1",
            "2130706433",
            "0x7f000001",
            "0x7f.0.0.1",
            "0177.0.0.1",
            "017700000001",
            "0x7F.1",
            "127.0.0.1.",
        ] {
            assert_eq!(ip_literal(spelling), Some(v4("127.0.0.1")), "{spelling}");
        }
        assert_eq!(ip_literal("0"), Some(v4("0.0.0.0")));
        assert_eq!(
            ip_literal("[::ffff:127.0.0.1]"),
            Some(IpAddr::V6("::ffff:127.0.0.1".parse().unwrap()))
        );
        assert_eq!(ip_literal("::1"), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        for name in [
            "example.com",
            "127.0.0.1.nip.io",
            "1.2.3.4.5",
            "256.1.1.1",
            "08.1.1.1",
        ] {
            assert_eq!(ip_literal(name), None, "{name}");
        }
    }

    #[test]
    fn numeric_looking_hosts_that_are_not_literals_are_noticed() {
        assert!(looks_numeric("08.1.1.1"));
        assert!(looks_numeric("1.2.3.4.5"));
        assert!(looks_numeric("[::1"));
        assert!(!looks_numeric("example.com"));
        assert!(!looks_numeric("cafe.be"));
        assert!(!looks_numeric("dead.beef"));
    }

    #[test]
    fn private_and_special_ipv4_is_refused_and_public_is_not() {
        for (ip, why) in [
            ("127.0.0.1", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("10.1.2.3", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared"),
            ("169.254.169.254", "metadata"),
            ("169.254.1.1", "link-local"),
            ("100.100.100.200", "metadata"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
        ] {
            let got = forbidden(v4(ip));
            assert!(got.is_some_and(|g| g.contains(why)), "{ip}: {got:?}");
        }
        for ip in ["8.8.8.8", "172.32.0.1", "93.184.216.34", "100.128.0.1"] {
            assert_eq!(forbidden(v4(ip)), None, "{ip}");
        }
    }

    #[test]
    fn ipv6_is_judged_by_the_ipv4_it_carries() {
        let v6 = |s: &str| IpAddr::V6(s.parse().unwrap());
        for ip in [
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
        ] {
            assert!(forbidden(v6(ip)).is_some(), "{ip}");
        }
        assert!(forbidden(v6("::ffff:169.254.169.254"))
            .unwrap()
            .contains("metadata"));
        for ip in [
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2a00:1450::1",
        ] {
            assert_eq!(forbidden(v6(ip)), None, "{ip}");
        }
    }
}
