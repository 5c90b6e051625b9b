//! The fuzz targets: each takes any bytes, drives one place where imgsearch reads input that a
//! user or the network controls, and panics only when a rule of the world is broken. The AFL++
//! binary (fuzz/src/main.rs) calls them; `tests/fuzz_corpus.rs` replays the committed seeds and
//! every regression input through the same functions in `make test`.
//!
//! Each oracle is written from the outside rule, not from the code under test: Kubernetes'
//! name and label rules, Milvus's expression grammar, the special-purpose address registries,
//! HTTP status classes.

use std::net::IpAddr;

/// Image bytes under limits: either the error the input calls for or a tensor of exactly the
/// model's shape with finite values, never a panic, and never more memory held than the
/// decoders are allowed for a canvas at the pixel limit.
pub fn decode(data: &[u8]) {
    use imgsearch::embed::DecodeLimits;
    use imgsearch::embed::preprocess::{ImageError, ModelInput, prepare, sniff_format};
    // Small limits keep each run fast; the limit checks are the same code at any size.
    let limits = DecodeLimits { max_dimension: 2048, max_pixels: 1_000_000 };
    let input = ModelInput { size: 32, mean: [0.5; 3], std: [0.25; 3] };
    let sniffed = sniff_format(data);
    // A decoder panic that `prepare` contains still runs the panic hook first, and with
    // RUST_BACKTRACE set (as in `make test`) the default hook reads the binary's debug info to
    // print a backtrace: some 70 MB that are the hook's, not the decoder's. Measured without
    // it: on this thread only, so other threads' panics still report.
    quiet_panics_on_this_thread(true);
    let (outcome, peak) = crate::allocation::peak_during(|| prepare(data, limits, input));
    quiet_panics_on_this_thread(false);
    // What `prepare` lets a decoder have (8 bytes a pixel at the limit, plus 64 MiB of the
    // decoder's own), and the input's own copy once more for a decoder that buffers it.
    // Rust allocations only: libjpeg-turbo's own `malloc`s are not seen (its input is bounded
    // by the header check and the scan count instead).
    let allowed = 1_000_000 * 8 + (64 << 20) + data.len();
    assert!(peak <= allowed, "{peak} bytes held at once, over the {allowed} a decoder is allowed");
    match outcome {
        Ok(prepared) => {
            assert!(sniffed.is_ok(), "decoded bytes whose format was not recognised");
            assert_eq!(prepared.tensor.len(), 3 * 32 * 32, "tensor of the model's shape");
            assert!(prepared.tensor.iter().all(|v| v.is_finite()), "finite values");
            assert!(prepared.width >= 1 && prepared.height >= 1, "a decoded image has pixels");
        }
        // Refused: for the reason the input gives, each checked from the outside.
        Err(ImageError::Empty) => assert!(data.is_empty(), "only an empty input is called empty"),
        Err(ImageError::UnsupportedFormat(_)) => {
            assert!(sniffed.is_err(), "a format it recognised was called unsupported")
        }
        Err(ImageError::TooLarge { width, height, .. }) => assert!(
            width > 2048 || height > 2048 || u64::from(width) * u64::from(height) > 1_000_000,
            "{width}×{height} was called too large but is within the limits"
        ),
        Err(ImageError::Corrupt { format, detail }) => {
            assert!(sniffed.is_ok() && !data.is_empty(), "only a recognised format can be corrupt");
            assert!(!detail.trim().is_empty(), "a corrupt {format} file is refused without a reason");
        }
    }
}

thread_local! {
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Silences the panic hook for panics on this thread while `quiet` (installed once, around the
/// hook that was there: every other thread's panics report as before).
fn quiet_panics_on_this_thread(quiet: bool) {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET_PANICS.with(|flag| flag.set(quiet));
}

/// A multipart upload body as a client may send it: read into a form, or refused with a 4xx.
/// The first line of the input is the boundary; the rest is the body.
pub fn multipart(data: &[u8]) {
    use axum::extract::{FromRequest, Multipart};
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let boundary = String::from_utf8_lossy(&data[..split]).into_owned();
    let body = data.get(split + 1..).unwrap_or_default().to_vec();
    let Ok(request) = axum::http::Request::post("/v1/search")
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(axum::body::Body::from(body))
    else {
        return; // not a header value a client could send
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    runtime.block_on(async {
        let form = match Multipart::from_request(request, &()).await {
            Ok(multipart) => imgsearch::api::read_form(multipart).await,
            Err(rejection) => Err(rejection.into()),
        };
        match form {
            Ok(form) => {
                for (name, value) in form.fields() {
                    assert!(value.len() <= 1024, "field {name:?} longer than the 1024-byte limit was kept");
                }
            }
            Err(error) => {
                let status = error.status();
                assert!(status.is_client_error(), "a malformed upload is the client's error, got {status}: {error}");
            }
        }
    });
}

/// A line of a URL list, screened as a fetch would be: accepted only as an http(s) URL with a
/// host and no credentials whose literal address, if any, is public; every public literal
/// address accepted. Also the list parser: every URL it keeps passes the same screen.
pub fn url_guard(data: &[u8]) {
    use imgsearch::source::urls::{AllowedNetworks, parse_list, screen};
    let text = String::from_utf8_lossy(data);
    let allowed = AllowedNetworks::default();
    if let Ok(urls) = parse_list(&text) {
        for url in &urls {
            let reparsed = reqwest::Url::parse(url).expect("a kept URL parses again");
            assert!(matches!(reparsed.scheme(), "http" | "https"), "{url}");
            assert!(reparsed.username().is_empty() && reparsed.password().is_none(), "credentials kept: {url}");
        }
    }
    let line = text.lines().next().unwrap_or("");
    let Ok(parsed) = reqwest::Url::parse(line.trim()) else { return };
    // WHATWG parsing turns every IPv4 spelling (decimal, hex, octal, short) into dotted
    // decimal and brackets IPv6, so a literal address is exactly a host that parses as one.
    let literal = parsed.host_str().and_then(|host| host.trim_start_matches('[').trim_end_matches(']').parse().ok());
    let screened = screen(line.trim(), &allowed);
    let well_formed = matches!(parsed.scheme(), "http" | "https")
        && parsed.host().is_some()
        && parsed.username().is_empty()
        && parsed.password().is_none();
    match literal {
        Some(ip) if well_formed => {
            let internal = special_purpose(ip);
            assert_eq!(screened.is_err(), internal, "{line:?}: {ip} internal={internal} but screen said {screened:?}");
        }
        _ if !well_formed => assert!(screened.is_err(), "{line:?} accepted"),
        _ => assert!(screened.is_ok(), "a name is for the resolver to judge: {line:?} {screened:?}"),
    }
}

/// The IANA IPv4 Special-Purpose Address Registry (RFC 6890 and successors), each row's
/// address block, name and "Globally Reachable" column (`None` for the registry's N/A), as
/// published (last updated 2022-02-02).
const IPV4_SPECIAL: &[(&str, &str, Option<bool>)] = &[
    ("0.0.0.0/8", "\"This network\"", Some(false)),
    ("0.0.0.0/32", "\"This host on this network\"", Some(false)),
    ("10.0.0.0/8", "Private-Use", Some(false)),
    ("100.64.0.0/10", "Shared Address Space", Some(false)),
    ("127.0.0.0/8", "Loopback", Some(false)),
    ("169.254.0.0/16", "Link Local", Some(false)),
    ("172.16.0.0/12", "Private-Use", Some(false)),
    ("192.0.0.0/24", "IETF Protocol Assignments", Some(false)),
    ("192.0.0.0/29", "IPv4 Service Continuity Prefix", Some(false)),
    ("192.0.0.8/32", "IPv4 dummy address", Some(false)),
    ("192.0.0.9/32", "Port Control Protocol Anycast", Some(true)),
    ("192.0.0.10/32", "Traversal Using Relays around NAT Anycast", Some(true)),
    ("192.0.0.170/32", "NAT64/DNS64 Discovery", Some(false)),
    ("192.0.0.171/32", "NAT64/DNS64 Discovery", Some(false)),
    ("192.0.2.0/24", "Documentation (TEST-NET-1)", Some(false)),
    ("192.31.196.0/24", "AS112-v4", Some(true)),
    ("192.52.193.0/24", "AMT", Some(true)),
    ("192.88.99.0/24", "Deprecated (6to4 Relay Anycast)", None),
    ("192.168.0.0/16", "Private-Use", Some(false)),
    ("192.175.48.0/24", "Direct Delegation AS112 Service", Some(true)),
    ("198.18.0.0/15", "Benchmarking", Some(false)),
    ("198.51.100.0/24", "Documentation (TEST-NET-2)", Some(false)),
    ("203.0.113.0/24", "Documentation (TEST-NET-3)", Some(false)),
    ("240.0.0.0/4", "Reserved", Some(false)),
    ("255.255.255.255/32", "Limited Broadcast", Some(false)),
];

/// The IANA IPv6 Special-Purpose Address Registry, as [`IPV4_SPECIAL`] (last updated
/// 2025-03-12, with RFC 9780's dummy prefix).
const IPV6_SPECIAL: &[(&str, &str, Option<bool>)] = &[
    ("::1/128", "Loopback Address", Some(false)),
    ("::/128", "Unspecified Address", Some(false)),
    ("::ffff:0:0/96", "IPv4-mapped Address", Some(false)),
    ("64:ff9b::/96", "IPv4-IPv6 Translat.", Some(true)),
    ("64:ff9b:1::/48", "IPv4-IPv6 Translat.", Some(false)),
    ("100::/64", "Discard-Only Address Block", Some(false)),
    ("100:0:0:1::/64", "Dummy IPv6 Prefix", Some(false)),
    ("2001::/23", "IETF Protocol Assignments", Some(false)),
    ("2001::/32", "TEREDO", None),
    ("2001:1::1/128", "Port Control Protocol Anycast", Some(true)),
    ("2001:1::2/128", "Traversal Using Relays around NAT Anycast", Some(true)),
    ("2001:1::3/128", "DNS-SD Service Registration Protocol Anycast", Some(true)),
    ("2001:2::/48", "Benchmarking", Some(false)),
    ("2001:3::/32", "AMT", Some(true)),
    ("2001:4:112::/48", "AS112-v6", Some(true)),
    ("2001:10::/28", "Deprecated (previously ORCHID)", None),
    ("2001:20::/28", "ORCHIDv2", Some(true)),
    ("2001:30::/28", "Drone Remote ID Protocol Entity Tags (DETs) Prefix", Some(true)),
    ("2001:db8::/32", "Documentation", Some(false)),
    ("2002::/16", "6to4", None),
    ("2620:4f:8000::/48", "Direct Delegation AS112 Service", Some(true)),
    ("3fff::/20", "Documentation", Some(false)),
    ("5f00::/16", "Segment Routing (SRv6) SIDs", Some(false)),
    ("fc00::/7", "Unique-Local", Some(false)),
    ("fe80::/10", "Link-Local Unicast", Some(false)),
];

/// The first and last address of every registry row, and the addresses just outside them:
/// where a transcription or a range check is most likely wrong.
#[allow(dead_code)] // used by tests/fuzz_corpus.rs, not by the fuzz binary
pub fn registry_boundaries() -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    for &(block, _, _) in IPV4_SPECIAL.iter().chain(IPV6_SPECIAL) {
        let (network, length) = block.split_once('/').expect("a CIDR");
        let length: u32 = length.parse().expect("a prefix length");
        match network.parse::<IpAddr>().expect("a registry address") {
            IpAddr::V4(network) => {
                let first = u32::from(network);
                let last = first | (u32::MAX.checked_shr(length).unwrap_or(0));
                for address in [first.wrapping_sub(1), first, last, last.wrapping_add(1)] {
                    addresses.push(IpAddr::V4(address.into()));
                }
            }
            IpAddr::V6(network) => {
                let first = u128::from(network);
                let last = first | (u128::MAX.checked_shr(length).unwrap_or(0));
                for address in [first.wrapping_sub(1), first, last, last.wrapping_add(1)] {
                    addresses.push(IpAddr::V6(address.into()));
                }
            }
        }
    }
    addresses
}

/// The registry row that decides for `ip`: the most specific block holding it.
fn registry_row(ip: IpAddr) -> Option<(&'static str, Option<bool>)> {
    let table = if ip.is_ipv4() { IPV4_SPECIAL } else { IPV6_SPECIAL };
    table
        .iter()
        .filter_map(|&(block, name, global)| {
            let (network, length) = block.split_once('/').expect("a CIDR");
            let network: IpAddr = network.parse().expect("a registry address");
            let length: u32 = length.parse().expect("a prefix length");
            let inside = match (ip, network) {
                (IpAddr::V4(ip), IpAddr::V4(net)) => {
                    length == 0 || (u32::from(ip) ^ u32::from(net)) >> (32 - length) == 0
                }
                (IpAddr::V6(ip), IpAddr::V6(net)) => {
                    length == 0 || (u128::from(ip) ^ u128::from(net)) >> (128 - length) == 0
                }
                _ => false,
            };
            inside.then_some((length, name, global))
        })
        .max_by_key(|&(length, _, _)| length)
        .map(|(_, name, global)| (name, global))
}

/// Whether an image fetch must not reach `ip`: the registry row that decides for it says it is
/// not globally reachable. Where the registries leave it to the user, imgsearch's choices,
/// each on purpose:
/// - IPv4 carried inside IPv6 is judged by its IPv4 address: IPv4-mapped, 6to4 (N/A in the
///   registry), NAT64's well-known prefix (globally reachable, but only as far as the IPv4
///   address it translates to) and the deprecated IPv4-compatible form (refused even when the
///   IPv4 address is public);
/// - the other N/A rows are refused: Teredo (its IPv4 address is obfuscated, and it can reach
///   any), the deprecated 6to4 relay anycast and ORCHID blocks;
/// - multicast (IANA's multicast registries, not the special-purpose ones) and the deprecated
///   IPv6 site-local block (fec0::/10, RFC 3879) are refused.
pub fn special_purpose(ip: IpAddr) -> bool {
    if let IpAddr::V6(v6) = ip {
        let bits = u128::from(v6);
        let within = |network: u128, length: u32| (bits ^ network) >> (128 - length) == 0;
        if let Some(v4) = v6.to_ipv4_mapped() {
            return special_purpose(IpAddr::V4(v4));
        }
        if within(0, 96) && bits > 1 {
            return true; // IPv4-compatible, deprecated (RFC 4291 2.5.5.1)
        }
        if within(0x2002 << 112, 16) {
            return special_purpose(IpAddr::V4(std::net::Ipv4Addr::from((bits >> 80) as u32)));
        }
        if within(0x0064_ff9b << 96, 96) {
            return special_purpose(IpAddr::V4(std::net::Ipv4Addr::from(bits as u32)));
        }
        if within(0xff00 << 112, 8) || within(0xfec0 << 112, 10) {
            return true;
        }
    }
    if let IpAddr::V4(v4) = ip
        && v4.octets()[0] & 0xf0 == 0xe0
    {
        return true; // multicast, 224.0.0.0/4
    }
    match registry_row(ip) {
        None => false,
        Some((_, Some(globally_reachable))) => !globally_reachable,
        Some((_, None)) => true,
    }
}

/// A URI prefix turned into a Milvus filter expression: the expression has exactly the shape
/// `uri >= "…"` [`and uri < "…"`], each literal is a valid string literal of Milvus's grammar
/// (Plan.g4: no raw `"`, `\`, CR or LF inside; escapes as Go's strconv.Unquote reads them), the
/// lower bound reads back as the prefix, and every URI under the prefix is inside the range.
pub fn prefix_filter(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (prefix, extension) = text.split_once('\u{0}').unwrap_or((&text, ""));
    let filter = imgsearch::store::SearchFilter { uri_prefix: Some(prefix.to_string()), ..Default::default() };
    let Some(expression) = filter.expression() else {
        assert!(prefix.is_empty(), "a non-empty prefix must filter");
        return;
    };
    let rest = expression.strip_prefix("uri >= ").unwrap_or_else(|| panic!("unexpected shape: {expression}"));
    let (lower, rest) = milvus_string_literal(rest).unwrap_or_else(|why| panic!("{why}: {expression:?}"));
    assert_eq!(lower, prefix, "the lower bound reads back as the prefix");
    let upper = if rest.is_empty() {
        None
    } else {
        let rest = rest.strip_prefix(" and uri < ").unwrap_or_else(|| panic!("unexpected shape: {expression}"));
        let (upper, after) = milvus_string_literal(rest).unwrap_or_else(|why| panic!("{why}: {expression:?}"));
        assert!(after.is_empty(), "nothing after the upper bound: {expression:?}");
        Some(upper)
    };
    let under = format!("{prefix}{extension}");
    assert!(under.as_str() >= lower.as_str(), "{under:?} below the range");
    if let Some(upper) = upper {
        assert!(under < upper, "{under:?} not below the upper bound {upper:?}");
        assert!(prefix < upper.as_str());
    }
}

/// Reads one double-quoted literal of Milvus's expression grammar from the start of `text`;
/// returns its value and what follows it.
fn milvus_string_literal(text: &str) -> Result<(String, &str), String> {
    let mut chars = text.char_indices();
    if chars.next().map(|(_, c)| c) != Some('"') {
        return Err("a literal starts with a double quote".into());
    }
    let mut value = String::new();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[at + 1..])),
            '\r' | '\n' => return Err("a raw line break inside a literal, which the grammar refuses".into()),
            '\\' => {
                let escaped = match chars.next().map(|(_, c)| c) {
                    Some('\\') => '\\',
                    Some('"') => '"',
                    Some('\'') => '\'',
                    Some('n') => '\n',
                    Some('r') => '\r',
                    Some('t') => '\t',
                    Some(other) => return Err(format!("an escape \\{other} the literal never needs")),
                    None => return Err("a literal ends in a lone backslash".into()),
                };
                value.push(escaped);
            }
            other => value.push(other),
        }
    }
    Err("an unterminated literal".into())
}

/// An ImageCollection as JSON, as a client that bypassed the CRD's schema may store it: either
/// a build error or children that Kubernetes would accept by its own naming rules.
pub fn collection_spec(data: &[u8]) {
    use imgsearch::controller::children::{
        ChildConfig, ingest_job, rescan_cronjob, search_deployment, search_endpoint, search_service,
    };
    let Ok(collection) = serde_json::from_slice::<imgsearch::crd::ImageCollection>(data) else { return };
    // The spec may be anything a client bypassing the schema stores, but the namespace and the
    // generation are the API server's: it only holds objects in namespaces that exist, whose
    // names are DNS-1123 labels, and counts generations from 1 (early runs of this target
    // flagged endpoints built from namespaces like "sh]p" and a label from generation -1).
    let metadata = &collection.metadata;
    if metadata.namespace.as_deref().is_some_and(|namespace| !dns_label(namespace))
        || metadata.generation.is_some_and(|generation| generation < 1)
    {
        return;
    }
    let config = ChildConfig { image: "imgsearch:fuzz".into(), image_pull_policy: None };
    let mut objects = Vec::new();
    if let Ok(job) = ingest_job(&collection, &config) {
        objects.push(("Job", serde_json::to_value(job).expect("a Job serialises")));
    }
    if let Ok(Some(cronjob)) = rescan_cronjob(&collection, &config) {
        objects.push(("CronJob", serde_json::to_value(cronjob).expect("a CronJob serialises")));
    }
    if let Ok(deployment) = search_deployment(&collection, &config) {
        objects.push(("Deployment", serde_json::to_value(deployment).expect("a Deployment serialises")));
    }
    if let Ok(service) = search_service(&collection) {
        objects.push(("Service", serde_json::to_value(service).expect("a Service serialises")));
    }
    if let Ok(endpoint) = search_endpoint(&collection) {
        assert!(reqwest::Url::parse(&endpoint).is_ok(), "the search endpoint is a URL: {endpoint:?}");
    }
    for (kind, object) in objects {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        // Jobs and Services name pods' hostnames and DNS records: DNS-1123 labels.
        assert!(dns_label(name), "{kind} name {name:?} is not a DNS-1123 label");
        // imgsearch promises clusters before Kubernetes 1.36 too, where a Service name is a
        // DNS-1035 label (it starts with a letter).
        if kind == "Service" {
            assert!(name.as_bytes()[0].is_ascii_lowercase(), "Service name {name:?} is not a DNS-1035 label");
        }
        // An Indexed Job's pods are named, and their hostnames set, `<job>-<index>`; a
        // CronJob's Jobs are `<cronjob>-<minutes since 1970>` (8 digits until 2160), so a
        // CronJob name has at most 52 characters (the API server's own rule) and its Jobs'
        // pods the same hostname rule.
        let completions = |spec: &serde_json::Value| spec["completions"].as_i64().unwrap_or(1).max(1);
        if kind == "Job" {
            let last = format!("{name}-{}", completions(&object["spec"]) - 1);
            assert!(dns_label(&last), "the Job's last pod hostname {last:?} is not a DNS-1123 label");
        }
        if kind == "CronJob" {
            assert!(name.len() <= 52, "CronJob name {name:?} is longer than 52");
            let last = format!("{name}-99999999-{}", completions(&object["spec"]["jobTemplate"]["spec"]) - 1);
            assert!(dns_label(&last), "a rescan Job's last pod hostname {last:?} is not a DNS-1123 label");
        }
        for (key, value) in object["metadata"]["labels"].as_object().into_iter().flatten() {
            assert!(
                label_value(value.as_str().unwrap_or("?")),
                "{kind} label {key}={value} is not a valid label value"
            );
        }
        let pod = if kind == "CronJob" {
            &object["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        } else {
            &object["spec"]["template"]["spec"]
        };
        for container in pod["containers"].as_array().into_iter().flatten() {
            for env in container["env"].as_array().into_iter().flatten() {
                let name = env["name"].as_str().unwrap_or_default();
                assert!(env_name(name), "{kind} env name {name:?} is not a C identifier");
            }
        }
    }
}

/// Kubernetes' IsDNS1123Label: at most 63 of [a-z0-9-], starting and ending alphanumeric.
fn dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Kubernetes' IsValidLabelValue: empty, or at most 63 of [A-Za-z0-9-_.] starting and ending
/// alphanumeric.
fn label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.is_empty()
        || (bytes.len() <= 63
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric())
}

/// What the pods' environment variable names are held to here: C identifiers (Kubernetes
/// accepts more, a shell fewer).
fn env_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty() && !bytes[0].is_ascii_digit() && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

/// A target's name and the function that takes one input.
pub type Target = (&'static str, fn(&[u8]));

/// Every target by name, for the binaries and the corpus replay.
pub const TARGETS: &[Target] = &[
    ("decode", decode),
    ("multipart", multipart),
    ("url_guard", url_guard),
    ("prefix_filter", prefix_filter),
    ("collection_spec", collection_spec),
];
