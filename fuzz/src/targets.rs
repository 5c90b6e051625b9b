//! The fuzz targets: each takes any bytes, drives one place where imgsearch reads input that a
//! user or the network controls, and panics only when a rule of the world is broken. The AFL++
//! binary (fuzz/src/main.rs) calls them; `tests/fuzz_corpus.rs` replays the committed seeds and
//! every regression input through the same functions in `make test`.
//!
//! Each oracle is written from the outside rule, not from the code under test: Kubernetes'
//! name and label rules, Milvus's expression grammar, the special-purpose address registries,
//! HTTP status classes.

use std::net::IpAddr;

/// Image bytes under limits: either a clear error or a tensor of exactly the model's shape
/// with finite values, never a panic, and never more than the limits' pixels decoded.
pub fn decode(data: &[u8]) {
    use imgsearch::embed::DecodeLimits;
    use imgsearch::embed::preprocess::{ModelInput, prepare, sniff_format};
    // Small limits keep each run fast; the limit checks are the same code at any size.
    let limits = DecodeLimits { max_dimension: 2048, max_pixels: 1_000_000 };
    let input = ModelInput { size: 32, mean: [0.5; 3], std: [0.25; 3] };
    let sniffed = sniff_format(data);
    match prepare(data, limits, input) {
        Ok(prepared) => {
            assert!(sniffed.is_ok(), "decoded bytes whose format was not recognised");
            assert_eq!(prepared.tensor.len(), 3 * 32 * 32, "tensor of the model's shape");
            assert!(prepared.tensor.iter().all(|v| v.is_finite()), "finite values");
            assert!(prepared.width >= 1 && prepared.height >= 1, "a decoded image has pixels");
            assert!(prepared.width <= 2048 && prepared.height <= 2048, "within max_dimension");
            assert!(u64::from(prepared.width) * u64::from(prepared.height) <= 1_000_000, "within max_pixels");
        }
        Err(error) => assert!(!error.to_string().is_empty(), "an error says something"),
    }
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

/// Whether `ip` lies in a range no image fetch should reach, from the IANA special-purpose
/// registries (RFC 6890 and successors) as CIDRs; IPv4 carried inside IPv6 (mapped, 6to4) is
/// judged by its IPv4 address, and the deprecated IPv4-compatible form is refused outright.
pub fn special_purpose(ip: IpAddr) -> bool {
    const V4: &[(u32, u8)] = &[
        (0x0000_0000, 8),  // "this network"
        (0x0A00_0000, 8),  // private
        (0x6440_0000, 10), // shared address space (CGNAT)
        (0x7F00_0000, 8),  // loopback
        (0xA9FE_0000, 16), // link-local, cloud metadata
        (0xAC10_0000, 12), // private
        (0xC0A8_0000, 16), // private
        (0xC612_0000, 15), // benchmarking
        (0xE000_0000, 4),  // multicast
        (0xF000_0000, 4),  // reserved and broadcast
    ];
    let v4 = |address: u32| V4.iter().any(|&(network, length)| (address ^ network) >> (32 - length) == 0);
    match ip {
        IpAddr::V4(ip) => v4(u32::from(ip)),
        IpAddr::V6(ip) => {
            let bits = u128::from(ip);
            let within = |network: u128, length: u32| (bits ^ network) >> (128 - length) == 0;
            if within(0xffff_0000_0000, 96) {
                return v4(bits as u32); // IPv4-mapped
            }
            if within(0, 96) {
                return true; // ::, ::1 and the deprecated IPv4-compatible form
            }
            if within(0x2002 << 112, 16) {
                return v4((bits >> 80) as u32); // 6to4
            }
            within(0xfc00 << 112, 7)           // unique local
                || within(0xfe80 << 112, 10)    // link-local
                || within(0xfec0 << 112, 10)    // site-local (deprecated)
                || within(0xff00 << 112, 8)     // multicast
                || within(0x0064_ff9b << 96, 32) // NAT64, well-known and local-use
        }
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

/// Every target by name, for the binaries and the corpus replay.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("decode", decode),
    ("multipart", multipart),
    ("url_guard", url_guard),
    ("prefix_filter", prefix_filter),
    ("collection_spec", collection_spec),
];
