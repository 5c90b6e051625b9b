//! Images listed by URL, one per line. The list comes from users, and the URLs in it are
//! fetched from inside the cluster, so fetching is guarded against server-side request forgery:
//! http(s) only, a few redirects at most, timeouts, a size cap, and no private, loopback,
//! link-local (cloud metadata) or otherwise internal address unless its network is allowed
//! explicitly. The guard checks every address a name resolves to, at connection time (so a
//! name cannot be re-pointed after a check), and every redirect target.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::{MAX_FILE_BYTES, ReadError, SourceError, SourceImage};

pub const MAX_REDIRECTS: usize = 5;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default limit for a whole request, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A list longer than this is refused rather than read into memory.
pub const MAX_LIST_BYTES: u64 = 64 << 20;

/// The URLs of a list file, validated and de-duplicated, and the guarded client to fetch them.
#[derive(Debug)]
pub struct UrlList {
    pub path: PathBuf,
    urls: Vec<String>,
    pub fetcher: Fetcher,
}

impl UrlList {
    /// Reads a list: one URL per line; blank lines and lines starting with '#' are ignored. A
    /// line that is not an http(s) URL fails the whole list, naming the line, since a list
    /// with typos is better fixed than half ingested.
    pub fn read(path: &Path, fetcher: Fetcher) -> Result<Self, SourceError> {
        let error = |message: String| SourceError::UrlList { path: path.to_path_buf(), message };
        let size = std::fs::metadata(path).map_err(|e| error(e.to_string()))?.len();
        if size > MAX_LIST_BYTES {
            return Err(error(format!("is {size} bytes, over the limit of {MAX_LIST_BYTES}")));
        }
        let text = std::fs::read(path).map_err(|e| error(e.to_string()))?;
        let text = String::from_utf8(text).map_err(|_| error("is not UTF-8 text".into()))?;
        let urls = parse_list(&text).map_err(error)?;
        Ok(Self { path: path.to_path_buf(), urls, fetcher })
    }

    pub fn images(&self) -> Vec<SourceImage> {
        self.urls.iter().map(|uri| SourceImage { uri: uri.clone(), size: None }).collect()
    }
}

/// The URLs of a list in normalised form (lower-case host, default port dropped), sorted and
/// without duplicates.
pub fn parse_list(text: &str) -> Result<Vec<String>, String> {
    let mut urls = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let url = parse_url(line).map_err(|why| format!("line {}: {why}", number + 1))?;
        urls.push(url.to_string());
    }
    urls.sort();
    urls.dedup();
    Ok(urls)
}

fn parse_url(text: &str) -> Result<Url, String> {
    let shown: String = text.chars().take(200).collect();
    let url = Url::parse(text).map_err(|e| format!("{shown:?} is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{shown:?} is not an http(s) URL"));
    }
    if url.host().is_none() {
        return Err(format!("{shown:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{shown:?} carries credentials; put them elsewhere, a URL is stored and shown"));
    }
    Ok(url)
}

/// Networks a fetch may reach although they are internal, e.g. an in-cluster image server's
/// `10.0.0.0/8`. Empty by default: only public addresses.
#[derive(Debug, Clone, Default)]
pub struct AllowedNetworks(Vec<(IpAddr, u8)>);

impl AllowedNetworks {
    /// Parses CIDRs such as `10.0.0.0/8`, `127.0.0.1/32` or `fd00::/8` (a bare address is /32
    /// or /128).
    pub fn parse(cidrs: &[String]) -> Result<Self, SourceError> {
        let mut networks = Vec::new();
        for cidr in cidrs.iter().map(|c| c.trim()).filter(|c| !c.is_empty()) {
            let invalid = || SourceError::InvalidSpec(format!("{cidr:?} is not a network like 10.0.0.0/8"));
            let (address, length) = cidr.split_once('/').unwrap_or((cidr, ""));
            let address: IpAddr = address.parse().map_err(|_| invalid())?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            let length = if length.is_empty() { max } else { length.parse::<u8>().map_err(|_| invalid())? };
            if length > max {
                return Err(invalid());
            }
            networks.push((address, length));
        }
        Ok(Self(networks))
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|&(network, length)| match (network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_matches(&n.octets(), &a.octets(), length),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_matches(&n.octets(), &a.octets(), length),
            _ => false,
        })
    }

    /// Why `ip` may not be fetched, or `None` when it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        let kind = internal_kind(ip)?;
        if self.contains(ip) { None } else { Some(kind) }
    }
}

fn prefix_matches(network: &[u8], address: &[u8], length: u8) -> bool {
    let (whole, rest) = (usize::from(length / 8), length % 8);
    network[..whole] == address[..whole]
        && (rest == 0 || {
            let mask = 0xffu8 << (8 - rest);
            network[whole] & mask == address[whole] & mask
        })
}

/// What kind of internal address `ip` is, if it is one: every block the IANA special-purpose
/// registries (IPv4 and IPv6) mark as not globally reachable, and multicast and the deprecated
/// site-local and IPv4-compatible forms. Blocks the registries mark globally reachable inside
/// refused ones (anycast services, AMT, AS112) pass. Forms that carry an IPv4 address (mapped,
/// 6to4, NAT64's well-known prefix) are judged by that address; the deprecated IPv4-compatible
/// form is refused whatever it carries (named for an internal address it carries), and Teredo,
/// whose embedded address is obfuscated, is refused outright. `fuzz/src/targets.rs` checks this
/// against the registries' own rows.
pub fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_kind_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_kind_v4(v4);
            }
            let bits = u128::from(v6);
            let within = |network: u128, length: u32| (bits ^ network) >> (128 - length) == 0;
            let low_v4 = Ipv4Addr::from(bits as u32);
            // Forms that carry an IPv4 address inside: judged by that address.
            if within(0, 96) && !v6.is_loopback() && !v6.is_unspecified() {
                return internal_kind_v4(low_v4).or(Some("IPv4-compatible (deprecated)"));
            }
            if within(0x2002 << 112, 16) {
                return internal_kind_v4(Ipv4Addr::from((bits >> 80) as u32));
            }
            if within(0x0064_ff9b << 96, 96) {
                return internal_kind_v4(low_v4); // NAT64's well-known prefix: a translated IPv4
            }
            let globally_reachable_inside_2001_23 = [
                (0x2001_0001_0000_0000_0000_0000_0000_0001, 128), // PCP anycast
                (0x2001_0001_0000_0000_0000_0000_0000_0002, 128), // TURN anycast
                (0x2001_0001_0000_0000_0000_0000_0000_0003, 128), // DNS-SD SRP anycast
                (0x2001_0003 << 96, 32),                          // AMT
                (0x2001_0004_0112 << 80, 48),                     // AS112-v6
                (0x2001_0020 << 96, 28),                          // ORCHIDv2
                (0x2001_0030 << 96, 28),                          // drone remote ID
            ];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if within(0xfc00 << 112, 7) {
                Some("private (unique local, which includes cloud metadata fd00:ec2::254)")
            } else if within(0xfe80 << 112, 10) {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if within(0xfec0 << 112, 10) {
                Some("site-local")
            } else if within(0x0064_ff9b_0001 << 80, 48) {
                Some("NAT64 local-use")
            } else if within(0x0100 << 112, 63) {
                Some("discard-only or dummy")
            } else if within(0x2001 << 112, 32) {
                Some("Teredo (it can reach internal IPv4)")
            } else if within(0x2001 << 112, 23)
                && !globally_reachable_inside_2001_23.iter().any(|&(network, length)| within(network, length))
            {
                Some("reserved (IETF protocol assignments: benchmarking, ORCHID)")
            } else if within(0x2001_0db8 << 96, 32) || within(0x3fff << 112, 20) {
                Some("documentation")
            } else if within(0x5f00 << 112, 16) {
                Some("segment routing (SRv6)")
            } else {
                None
            }
        }
    }
}

fn internal_kind_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, d] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata lives at 169.254.169.254)")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared address space (carrier-grade NAT)")
    } else if a == 0 || ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("reserved")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("reserved (benchmarking)")
    } else if (a, b, c) == (192, 0, 0) && d != 9 && d != 10 {
        // 192.0.0.9 (PCP anycast) and .10 (TURN anycast) are globally reachable.
        Some("reserved (IETF protocol assignments)")
    } else if matches!((a, b, c), (192, 0, 2) | (198, 51, 100) | (203, 0, 113)) {
        Some("documentation (TEST-NET)")
    } else if (a, b, c) == (192, 88, 99) {
        Some("6to4 relay anycast (deprecated)")
    } else {
        None
    }
}

/// A refused address; found in a failed request's error chain to tell it from a network error.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refused(host: &str, ip: IpAddr, kind: &str) -> Refused {
    let what = if host == ip.to_string() { host.to_string() } else { format!("{host} ({ip})") };
    Refused(format!("{what} is a {kind} address; refused (allow its network explicitly if it is meant to be fetched)"))
}

/// DNS resolution that refuses a name if any of its addresses is internal and not allowed.
#[derive(Debug)]
struct GuardedResolver {
    allowed: AllowedNetworks,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed = self.allowed.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addresses = judge_resolved(&host, addresses, &allowed)
                .map_err(|refused| Box::new(refused) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

/// The addresses a name resolved to, if every one of them may be reached. One internal
/// address refuses the name, whatever else it resolves to: the client would otherwise pick
/// one, and a name answering a public and a private address (or changing its answer between
/// a check and the connection, DNS rebinding) would reach the private one. The addresses
/// returned are the ones the connection uses: there is no second lookup to rebind.
fn judge_resolved(
    host: &str,
    addresses: Vec<SocketAddr>,
    allowed: &AllowedNetworks,
) -> Result<Vec<SocketAddr>, Refused> {
    match addresses.iter().find_map(|a| allowed.refusal(a.ip()).map(|kind| (a.ip(), kind))) {
        Some((ip, kind)) => Err(refused(host, ip, kind)),
        None => Ok(addresses),
    }
}

/// Checks what the resolver never sees: a URL whose host is a literal address.
fn check_literal_host(url: &Url, allowed: &AllowedNetworks) -> Result<(), Refused> {
    // host_str() brackets IPv6 literals; a name does not parse as an address.
    let host = url.host_str().unwrap_or("");
    let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() else {
        return Ok(());
    };
    match allowed.refusal(ip) {
        Some(kind) => Err(refused(&ip.to_string(), ip, kind)),
        None => Ok(()),
    }
}

/// The checks a URL passes before any connection: an http(s) URL with a host and no
/// credentials, whose host, if it is a literal address, is not internal (names are judged by
/// the resolver, address by address). Public so the fuzz target can hold it to its rules.
pub fn screen(url: &str, allowed: &AllowedNetworks) -> Result<Url, String> {
    let parsed = parse_url(url)?;
    check_literal_host(&parsed, allowed).map_err(|refused| refused.0)?;
    Ok(parsed)
}

/// Fetches images over HTTP(S) within the limits above.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    allowed: AllowedNetworks,
    timeout: Duration,
    /// Largest body accepted.
    max_bytes: u64,
}

impl Fetcher {
    pub fn new(allowed: AllowedNetworks, timeout: Duration) -> Result<Self, SourceError> {
        super::install_crypto_provider();
        let redirect_allowed = allowed.clone();
        let client = reqwest::Client::builder()
            // A proxy would resolve names itself, out of the guard's sight: never use one.
            .no_proxy()
            .user_agent(concat!("imgsearch/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            .dns_resolver(Arc::new(GuardedResolver { allowed: allowed.clone() }))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                // previous() holds the original URL and every redirect before this one.
                if attempt.previous().len() > MAX_REDIRECTS {
                    return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
                }
                let url = attempt.url().clone();
                if !matches!(url.scheme(), "http" | "https") {
                    return attempt.error(format!("redirected to {url}, which is not http(s)"));
                }
                match check_literal_host(&url, &redirect_allowed) {
                    Ok(()) => attempt.follow(),
                    Err(refused) => attempt.error(refused),
                }
            }))
            .build()
            .map_err(|e| SourceError::InvalidSpec(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Self { client, allowed, timeout, max_bytes: MAX_FILE_BYTES })
    }

    /// Accepts bodies up to `max_bytes` instead of the ingest limit (a search server takes no
    /// more from a URL than it would take in an upload).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The image at `url`: refused, unusable or unavailable as [`ReadError`] says.
    pub async fn fetch(&self, url: &str) -> Result<Vec<u8>, ReadError> {
        let unusable = |reason: String| ReadError::Unusable { reason, size_bytes: None };
        let parsed = screen(url, &self.allowed).map_err(unusable)?;
        let failure = |error| request_failure(error, self.timeout);
        let mut response = self.client.get(parsed).send().await.map_err(failure)?;
        let status = response.status();
        if !status.is_success() {
            let reason = format!("the server answered HTTP {status}");
            // Worth another try later: server errors, rate limiting, and refusals that often
            // pass (an expired signed URL, a firewall's 403). 404, 410 and the rest will not change.
            return Err(if status.is_server_error() || matches!(status.as_u16(), 401 | 403 | 408 | 429) {
                ReadError::Unavailable { reason }
            } else {
                unusable(reason)
            });
        }
        if let Some(content_type) = response.headers().get(reqwest::header::CONTENT_TYPE) {
            let content_type = content_type.to_str().unwrap_or("(not text)").to_ascii_lowercase();
            let essence = content_type.split(';').next().unwrap_or("").trim();
            // Only what is clearly a document is refused here: stores often label images
            // `binary/octet-stream` or worse, and the bytes are sniffed when decoded anyway.
            let document = essence.starts_with("text/")
                || matches!(essence, "application/json" | "application/xml" | "application/xhtml+xml");
            if document {
                return Err(unusable(format!("the server sent Content-Type {essence}, not an image")));
            }
        }
        let limit = self.max_bytes;
        if let Some(length) = response.content_length().filter(|&length| length > limit) {
            return Err(ReadError::Unusable {
                reason: format!("file is {length} bytes, over the limit of {limit}"),
                size_bytes: Some(length),
            });
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failure)? {
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(ReadError::Unusable {
                    reason: format!("the body is over the limit of {limit} bytes"),
                    size_bytes: None,
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

/// Sorts a failed request: refused by the guard or a bad redirect → unusable; the network or
/// the server's slowness → unavailable for now.
fn request_failure(error: reqwest::Error, timeout: Duration) -> ReadError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = cause {
        if let Some(refused) = current.downcast_ref::<Refused>() {
            return ReadError::Unusable { reason: refused.0.clone(), size_bytes: None };
        }
        cause = current.source();
    }
    let detail = chain(&error);
    if error.is_redirect() {
        ReadError::Unusable { reason: detail, size_bytes: None }
    } else if error.is_timeout() {
        ReadError::Unavailable { reason: format!("timed out after {} s: {detail}", timeout.as_secs()) }
    } else {
        ReadError::Unavailable { reason: detail }
    }
}

/// An error and its causes on one line (reqwest's own message omits the cause).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let part = current.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = current.source();
    }
    text
}

/// Every way to write an internal address in a URL is refused: generated addresses in each
/// internal IPv4 range, in every textual form the URL parser turns into that address and in
/// every IPv6 form that carries it.
#[cfg(test)]
mod address_properties {
    use super::*;
    use proptest::prelude::*;

    /// An address in one of the internal IPv4 ranges.
    fn internal_v4() -> impl Strategy<Value = Ipv4Addr> {
        let ranges: [(u32, u8); 8] = [
            (0x7F00_0000, 8),  // loopback
            (0x0A00_0000, 8),  // private
            (0xAC10_0000, 12), // private
            (0xC0A8_0000, 16), // private
            (0xA9FE_0000, 16), // link-local, cloud metadata
            (0x6440_0000, 10), // carrier-grade NAT
            (0x0000_0000, 8),  // "this network"
            (0xF000_0000, 4),  // reserved, broadcast
        ];
        (0..ranges.len(), any::<u32>()).prop_map(move |(which, bits)| {
            let (network, length) = ranges[which];
            Ipv4Addr::from(network | (bits >> length))
        })
    }

    /// URL hosts that mean `ip`: dotted, one decimal number, hex, octal, and IPv6 forms.
    fn spellings(ip: Ipv4Addr) -> Vec<String> {
        let [a, b, c, d] = ip.octets();
        let number = u32::from(ip);
        let mapped = ip.to_ipv6_mapped();
        let segments = mapped.segments();
        vec![
            ip.to_string(),
            number.to_string(),
            format!("0x{number:x}"),
            format!("0{a:o}.0{b:o}.0{c:o}.0{d:o}"),
            format!("0x{a:x}.0x{b:x}.0x{c:x}.0x{d:x}"),
            format!("{a}.{}", (u32::from(b) << 16) | (u32::from(c) << 8) | u32::from(d)),
            format!("[{mapped}]"),
            format!("[::ffff:{ip}]"),
            format!("[::{ip}]"),
            format!("[2002:{:x}:{:x}::1]", segments[6], segments[7]),
            format!("[64:ff9b::{ip}]"),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn every_spelling_of_an_internal_address_is_refused(ip in internal_v4(), port in 1u16..) {
            let allowed = AllowedNetworks::default();
            for host in spellings(ip) {
                let text = format!("http://{host}:{port}/photo.jpg");
                // A spelling the URL parser refuses cannot be fetched either.
                let Ok(url) = Url::parse(&text) else { continue };
                prop_assert!(check_literal_host(&url, &allowed).is_err(), "{} ({}) was not refused", text, ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an IP address")
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_pass() {
        let none = AllowedNetworks::default();
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "::7f00:1",
            "2002:a9fe:a9fe::1",
            "fec0::1",
            "64:ff9b::7f00:1",
            "192.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "192.88.99.1",
            "100::1",
            "2001::1",
            "2001:2::1",
            "2001:db8::1",
            "3fff::1",
            "5f00::1",
        ] {
            assert!(none.refusal(ip(internal)).is_some(), "{internal} must be refused");
        }
        assert!(none.refusal(ip("2001:0:4136:e378::1")).unwrap().contains("Teredo"));
        // Public, including the globally reachable rows inside refused blocks and NAT64 of a
        // public IPv4 address (what DNS64 gives every IPv4-only host in an IPv6-only cluster).
        for public in [
            "0:2001::1",
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "2002:5db8:d822::1",
            "192.0.0.9",
            "64:ff9b::808:808",
            "2001:1::1",
            "2001:3::1",
            "2001:20::1",
        ] {
            assert_eq!(none.refusal(ip(public)), None, "{public} is public");
        }
        assert!(none.refusal(ip("169.254.169.254")).unwrap().contains("metadata"));
    }

    #[test]
    fn a_name_with_any_internal_address_among_its_answers_is_refused() {
        let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 0);
        let none = AllowedNetworks::default();
        let public = vec![at("93.184.216.34"), at("2606:2800:220:1::1")];
        assert_eq!(judge_resolved("example.com", public.clone(), &none).unwrap(), public);
        for answers in [
            vec![at("93.184.216.34"), at("10.0.0.5")],
            vec![at("169.254.169.254"), at("93.184.216.34")],
            vec![at("2606:2800:220:1::1"), at("::ffff:127.0.0.1")],
        ] {
            let refusal = judge_resolved("mixed.example", answers.clone(), &none).unwrap_err().0;
            assert!(refusal.starts_with("mixed.example (") && refusal.contains("; refused"), "{answers:?}: {refusal}");
        }
        let allowed = AllowedNetworks::parse(&["10.0.0.0/8".into()]).unwrap();
        let inside = vec![at("93.184.216.34"), at("10.0.0.5")];
        assert_eq!(judge_resolved("mixed.example", inside.clone(), &allowed).unwrap(), inside);
    }

    #[test]
    fn allowed_networks_open_exactly_their_range() {
        let allowed = AllowedNetworks::parse(&["10.0.0.0/8".into(), "127.0.0.1".into(), "fd12::/16".into()]).unwrap();
        assert_eq!(allowed.refusal(ip("10.200.0.1")), None);
        assert_eq!(allowed.refusal(ip("127.0.0.1")), None);
        assert!(allowed.refusal(ip("127.0.0.2")).is_some(), "a /32 is one address");
        assert_eq!(allowed.refusal(ip("fd12:3456::1")), None);
        assert!(allowed.refusal(ip("fd13::1")).is_some());
        assert!(allowed.refusal(ip("192.168.0.1")).is_some());
        let odd = AllowedNetworks::parse(&["172.16.0.0/12".into()]).unwrap();
        assert_eq!(odd.refusal(ip("172.31.255.255")), None);
        assert!(odd.refusal(ip("192.168.0.1")).is_some());
        for bad in ["10.0.0.0/33", "ten/8", "10.0.0.0/x", "::/129"] {
            let error = AllowedNetworks::parse(&[bad.into()]).unwrap_err().to_string();
            assert!(error.contains("is not a network"), "{bad}: {error}");
        }
    }

    #[test]
    fn lists_skip_comments_normalise_and_deduplicate() {
        let urls = parse_list(
            "# product shots\n\nhttps://Images.Example.com:443/a.jpg\n  http://example.com/b.png  \nhttps://images.example.com/a.jpg\n",
        )
        .unwrap();
        assert_eq!(urls, vec!["http://example.com/b.png", "https://images.example.com/a.jpg"]);
    }

    #[test]
    fn a_bad_line_fails_the_list_naming_it() {
        let error = parse_list("https://example.com/a.jpg\nfile:///etc/passwd\n").unwrap_err();
        assert_eq!(error, "line 2: \"file:///etc/passwd\" is not an http(s) URL");
        let error = parse_list("not a url").unwrap_err();
        assert!(error.starts_with("line 1: \"not a url\" is not a URL"), "{error}");
        let error = parse_list("https://user:secret@example.com/a.jpg").unwrap_err();
        assert!(error.contains("carries credentials"), "{error}");
    }
}
