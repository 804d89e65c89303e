//! Who sent a request, behind reverse proxies: the client's address, the scheme and the host.
//!
//! Invariants: forwarded headers (RFC 7239 `Forwarded`, else `X-Forwarded-For`, `-Proto`,
//! `-Host`) are believed only when the peer is in `trusted_proxies`; from anyone else they are
//! ignored. The client is the rightmost address in the chain that is not itself a trusted proxy,
//! so a client cannot choose its address by sending the header itself. What comes out is the
//! address throttling, audit events and session IP binding use. The issuer, never the request's
//! host, names Lanyard in anything it sends.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

use crate::AppState;

/// A CIDR (`10.0.0.0/8`) or a single address, as written in `trusted_proxies`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustedProxy(IpNet);

impl TrustedProxy {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }

    /// Whether this entry trusts every address of its family.
    pub fn is_everyone(&self) -> bool {
        self.0.prefix_len() == 0
    }
}

impl FromStr for TrustedProxy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Self(net.trunc()));
        }
        s.parse::<IpAddr>()
            .map(|ip| Self(IpNet::from(ip)))
            .map_err(|_| format!("{s:?} is not an address or CIDR"))
    }
}

impl std::fmt::Display for TrustedProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> serde::Deserialize<'de> for TrustedProxy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for TrustedProxy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What Lanyard believes about a request.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Seen {
    /// The address that connected.
    pub peer: Option<IpAddr>,
    /// Whether that address is in `trusted_proxies`.
    pub peer_trusted: bool,
    /// The client, after believing what trusted proxies say.
    pub client_ip: Option<IpAddr>,
    /// `https` or `http`, as the client used it.
    pub scheme: &'static str,
    /// The host the client asked for.
    pub host: Option<String>,
}

/// One element of a forwarding chain: what a proxy said about the hop before it.
#[derive(Default)]
struct Hop {
    /// `None` for `unknown`, obfuscated or unreadable nodes.
    for_ip: Option<IpAddr>,
    proto: Option<String>,
    host: Option<String>,
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]:4711`,
/// `2001:db8::1`.
fn node_ip(v: &str) -> Option<IpAddr> {
    let v = unquote(v);
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Some(ip);
    }
    v.parse::<SocketAddr>().ok().map(|a| a.ip())
}

fn header_values<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// RFC 7239 §4: elements separated by commas (across header lines), pairs by semicolons.
fn forwarded_chain(headers: &HeaderMap) -> Vec<Hop> {
    header_values(headers, "forwarded")
        .map(|element| {
            let mut hop = Hop::default();
            for pair in element.split(';') {
                let Some((k, v)) = pair.split_once('=') else {
                    continue;
                };
                match k.trim().to_ascii_lowercase().as_str() {
                    "for" => hop.for_ip = node_ip(v),
                    "proto" => hop.proto = Some(unquote(v).to_ascii_lowercase()),
                    "host" => hop.host = Some(unquote(v).to_owned()),
                    _ => {}
                }
            }
            hop
        })
        .collect()
}

/// The same from the `X-Forwarded-*` family; only the nearest proxy's proto and host count.
fn x_forwarded_chain(headers: &HeaderMap) -> Vec<Hop> {
    let mut chain: Vec<Hop> = header_values(headers, "x-forwarded-for")
        .map(|v| Hop {
            for_ip: node_ip(v),
            ..Hop::default()
        })
        .collect();
    let proto = header_values(headers, "x-forwarded-proto").last();
    let host = header_values(headers, "x-forwarded-host").last();
    if proto.is_some() || host.is_some() {
        if chain.is_empty() {
            chain.push(Hop::default());
        }
        if let Some(last) = chain.last_mut() {
            last.proto = proto.map(str::to_ascii_lowercase);
            last.host = host.map(str::to_owned);
        }
    }
    chain
}

/// Works out who sent a request that arrived from `peer` with `headers`.
pub fn resolve(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[TrustedProxy]) -> Seen {
    let peer = peer.map(|p| p.to_canonical());
    let is_trusted = |ip: IpAddr| trusted.iter().any(|t| t.contains(ip));
    let own_host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let peer_trusted = peer.is_some_and(is_trusted);
    let mut seen = Seen {
        peer,
        peer_trusted,
        client_ip: peer,
        scheme: "http",
        host: own_host,
    };
    if !peer_trusted {
        return seen;
    }
    let chain = if headers.contains_key("forwarded") {
        forwarded_chain(headers)
    } else {
        x_forwarded_chain(headers)
    };
    // From the nearest proxy outwards: stop at the first address no trusted proxy owns, or at
    // an unknown or hidden node (then the proxy that reported it is as far as we can see).
    let mut client_hop = chain.len();
    for (i, hop) in chain.iter().enumerate().rev() {
        client_hop = i;
        match hop.for_ip {
            Some(ip) => {
                seen.client_ip = Some(ip.to_canonical());
                if !is_trusted(ip) {
                    break;
                }
            }
            None => break,
        }
    }
    // The scheme and host of the client's own request: said in its hop, or else by a proxy
    // nearer to Lanyard.
    let from_client_on = chain.get(client_hop..).unwrap_or_default();
    if let Some(proto) = from_client_on.iter().find_map(|h| h.proto.as_deref()) {
        seen.scheme = if proto == "https" { "https" } else { "http" };
    }
    if let Some(host) = from_client_on.iter().find_map(|h| h.host.as_deref()) {
        seen.host = Some(host.to_owned());
    }
    seen
}

/// Resolves every request once, before anything else reads the client's address.
pub(crate) async fn resolve_peer(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let seen = resolve(peer, req.headers(), &state.config.trusted_proxies);
    req.extensions_mut().insert(seen);
    next.run(req).await
}

/// `GET /_lanyard/request`: what Lanyard sees of this request, for `lanyard doctor` and for
/// operators checking a proxy set-up. It tells a client only about its own request.
pub(crate) async fn request_get(
    axum::Extension(seen): axum::Extension<Seen>,
) -> impl axum::response::IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(seen))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> Vec<TrustedProxy> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn an_untrusted_peer_cannot_choose_its_address() {
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=198.51.100.1;proto=https"),
            ("host", "lanyard.internal:8080"),
        ]);
        let seen = resolve(ip("192.0.2.50"), &h, &proxies(&["10.0.0.0/8"]));
        assert_eq!(seen.client_ip, ip("192.0.2.50"));
        assert_eq!(seen.scheme, "http");
        assert_eq!(seen.host.as_deref(), Some("lanyard.internal:8080"));
        assert!(!seen.peer_trusted);
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8", "127.0.0.1"]);
        // The client claimed 1.2.3.4 itself; the edge proxy appended the real address.
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4, 198.51.100.7"),
            ("x-forwarded-for", "10.1.1.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "id.example.org"),
        ]);
        let seen = resolve(ip("127.0.0.1"), &h, &trusted);
        assert_eq!(seen.client_ip, ip("198.51.100.7"));
        assert_eq!(seen.scheme, "https");
        assert_eq!(seen.host.as_deref(), Some("id.example.org"));
    }

    #[test]
    fn forwarded_wins_and_is_parsed_as_rfc_7239_writes_it() {
        let trusted = proxies(&["::1", "10.0.0.0/8"]);
        let h = headers(&[
            (
                "forwarded",
                r#"for="[2001:db8:cafe::17]:4711";proto=https;host=id.example.org, for=10.0.0.2"#,
            ),
            ("x-forwarded-for", "203.0.113.1"),
        ]);
        let seen = resolve(ip("::1"), &h, &trusted);
        assert_eq!(seen.client_ip, ip("2001:db8:cafe::17"));
        assert_eq!(seen.scheme, "https", "as the client's hop says");
        assert_eq!(seen.host.as_deref(), Some("id.example.org"));

        let h = headers(&[("forwarded", "for=unknown;proto=https;host=id.example.org")]);
        let seen = resolve(ip("10.0.0.3"), &h, &trusted);
        assert_eq!(seen.client_ip, ip("10.0.0.3"), "unknown stops at the proxy");
        assert_eq!(seen.scheme, "https");
        assert_eq!(seen.host.as_deref(), Some("id.example.org"));
    }

    #[test]
    fn mapped_addresses_and_ports_are_understood() {
        let trusted = proxies(&["127.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "198.51.100.7:5555")]);
        let seen = resolve(ip("::ffff:127.0.0.1"), &h, &trusted);
        assert!(seen.peer_trusted);
        assert_eq!(seen.client_ip, ip("198.51.100.7"));
        assert_eq!(seen.peer, ip("127.0.0.1"));
    }

    #[test]
    fn garbage_is_not_an_address() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "<script>, 10.0.0.9")]);
        let seen = resolve(ip("10.0.0.1"), &h, &trusted);
        assert_eq!(
            seen.client_ip,
            ip("10.0.0.9"),
            "stops before the unreadable hop"
        );
        assert!("10.0.0.0/33".parse::<TrustedProxy>().is_err());
        assert!("example.org".parse::<TrustedProxy>().is_err());
        assert_eq!(
            "10.1.2.3/8".parse::<TrustedProxy>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert!("0.0.0.0/0".parse::<TrustedProxy>().unwrap().is_everyone());
    }
}
