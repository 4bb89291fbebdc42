//! Who is calling: the client's address behind the proxies we trust.
//!
//! `X-Forwarded-For` is believed only from a trusted proxy, and read from the right:
//! each trusted hop appends the address it saw, so the right-most address that is
//! not itself a trusted proxy is the client. Anything to its left was written by the
//! client and may be forged.

use std::net::IpAddr;

use actix_web::HttpRequest;
use actix_web::http::header::HeaderMap;
use ipnet::IpNet;

/// The key a per-address limit counts a client under: an IPv4 address as it is
/// (IPv4-mapped IPv6 is the IPv4 address), an IPv6 address by its /64, since one
/// subscriber usually holds a whole /64 and could otherwise take a fresh address
/// for every attempt.
pub fn limit_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{net}/64")
            }
        },
    }
}

/// The client's address: the connection's peer, or, when the peer is a trusted
/// proxy, the address its `X-Forwarded-For` chain names.
pub fn client_ip(req: &HttpRequest, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    Some(resolve(peer, req.headers(), trusted))
}

fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Several headers are one list, in order.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) if is_trusted(&ip) => client = ip,
            Some(ip) => return ip,
            // An unreadable hop: nothing to its left can be trusted either.
            None => return client,
        }
    }
    client
}

/// An address as proxies write it: `203.0.113.7`, `2001:db8::1`, or with a port
/// (`203.0.113.7:5411`, `[2001:db8::1]:5411`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderName, HeaderValue};

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(
                HeaderName::from_static("x-forwarded-for"),
                HeaderValue::from_str(v).expect("header value"),
            );
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        assert_eq!(limit_key(ip("203.0.113.7")), "203.0.113.7");
        assert_eq!(limit_key(ip("::ffff:203.0.113.7")), "203.0.113.7");
        assert_eq!(limit_key(ip("2001:db8:1:2::1")), "2001:db8:1:2::/64");
        assert_eq!(
            limit_key(ip("2001:db8:1:2:ffff:eeee:dddd:cccc")),
            limit_key(ip("2001:db8:1:2::1"))
        );
        assert_ne!(limit_key(ip("2001:db8:1:3::1")), limit_key(ip("2001:db8:1:2::1")));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        // A direct client cannot claim another address.
        assert_eq!(
            resolve(ip("198.51.100.9"), &headers(&["1.2.3.4"]), &trusted),
            ip("198.51.100.9")
        );
        // Behind the load balancer: the address it appended.
        assert_eq!(
            resolve(ip("10.1.2.3"), &headers(&["203.0.113.7"]), &trusted),
            ip("203.0.113.7")
        );
        // A forged left-most entry is ignored: the right-most untrusted address wins.
        assert_eq!(
            resolve(ip("10.1.2.3"), &headers(&["1.2.3.4, 203.0.113.7, 10.9.9.9"]), &trusted),
            ip("203.0.113.7")
        );
        // Split over several headers, with ports.
        assert_eq!(
            resolve(
                ip("10.1.2.3"),
                &headers(&["1.2.3.4", "[2001:db8::1]:5411, 10.0.0.2:80"]),
                &trusted
            ),
            ip("2001:db8::1")
        );
        // Only proxies in the chain: the left-most of them.
        assert_eq!(
            resolve(ip("10.1.2.3"), &headers(&["10.0.0.5"]), &trusted),
            ip("10.0.0.5")
        );
        // No header, or garbage: the last trusted hop.
        assert_eq!(resolve(ip("10.1.2.3"), &headers(&[]), &trusted), ip("10.1.2.3"));
        assert_eq!(
            resolve(ip("10.1.2.3"), &headers(&["unknown"]), &trusted),
            ip("10.1.2.3")
        );
        // Nothing trusted (the default): always the peer.
        assert_eq!(resolve(ip("10.1.2.3"), &headers(&["203.0.113.7"]), &[]), ip("10.1.2.3"));
    }
}
