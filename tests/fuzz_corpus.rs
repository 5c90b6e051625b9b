//! Replays every fuzz target's committed seeds and every input a fuzzing run found (fuzz/seeds,
//! fuzz/regressions) through the same target functions the AFL++ binary runs, so a fixed
//! finding stays fixed in `make test` without AFL++ installed. `make fuzz` does the fuzzing.

#[path = "../fuzz/src/allocation.rs"]
mod allocation;
#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::path::Path;

fn inputs(kind: &str, target: &str) -> Vec<std::path::PathBuf> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&folder) else { return Vec::new() };
    let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_every_finding_passes_its_target() {
    let mut replayed = 0;
    for &(name, target) in targets::TARGETS {
        let seeds = inputs("seeds", name);
        assert!(seeds.len() >= 4, "target {name} has {} seeds in fuzz/seeds/{name}", seeds.len());
        for file in seeds.iter().chain(inputs("regressions", name).iter()) {
            let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "fuzz target {name} failed on {}", file.display());
            replayed += 1;
        }
    }
    assert!(replayed >= 20, "{replayed} inputs replayed");
    // The findings fixed so far: each must be replayed, not lost to a renamed folder.
    for (target, name) in [
        ("decode", "zune-upsampler-panic.jpg"),
        ("decode", "tiff-tag-claiming-5-million-values-in-284-bytes.tiff"),
        ("decode", "gif-frame-65288-wide-on-an-8x6-canvas.gif"),
        ("decode", "bigtiff-entry-of-an-undefined-type-misread-as-268-MB.tiff"),
        ("prefix_filter", "line-break-in-a-prefix.txt"),
    ] {
        assert!(
            inputs("regressions", target).iter().any(|file| file.ends_with(name)),
            "fuzz/regressions/{target}/{name} is gone"
        );
    }
}

/// Seeds are only useful if they reach the code past the parser: every ImageCollection seed
/// parses, and every image seed but the broken ones decodes.
#[test]
fn the_seeds_reach_past_the_parsers() {
    for file in inputs("seeds", "collection_spec") {
        let data = std::fs::read(&file).unwrap();
        let parsed = serde_json::from_slice::<imgsearch::crd::ImageCollection>(&data);
        assert!(parsed.is_ok(), "{} does not parse: {:?}", file.display(), parsed.err());
    }
    let limits = imgsearch::embed::DecodeLimits::default();
    let input = imgsearch::embed::preprocess::ModelInput { size: 32, mean: [0.5; 3], std: [0.25; 3] };
    let mut decoded = 0;
    for file in inputs("seeds", "decode") {
        let data = std::fs::read(&file).unwrap();
        decoded += usize::from(imgsearch::embed::preprocess::prepare(&data, limits, input).is_ok());
    }
    assert!(decoded >= 8, "{decoded} image seeds decode");
}

/// The URL guard against the IANA registries' rows (the `url_guard` oracle), at every row's
/// first and last address and just outside: a block the guard misses, or one it refuses that
/// the registries call globally reachable, fails here in `make test`, not only under AFL++.
#[test]
fn the_url_guard_refuses_exactly_what_the_special_purpose_registries_say_at_every_boundary() {
    use imgsearch::source::urls::{AllowedNetworks, screen};
    let allowed = AllowedNetworks::default();
    let mut disagreements = Vec::new();
    let boundaries = targets::registry_boundaries();
    for ip in &boundaries {
        let url = match ip {
            std::net::IpAddr::V4(ip) => format!("http://{ip}/a.jpg"),
            std::net::IpAddr::V6(ip) => format!("http://[{ip}]/a.jpg"),
        };
        let refused = screen(&url, &allowed).is_err();
        if refused != targets::special_purpose(*ip) {
            disagreements.push(format!("{ip}: guard {}", if refused { "refuses" } else { "accepts" }));
        }
    }
    assert!(boundaries.len() > 150, "{} boundary addresses", boundaries.len());
    assert!(disagreements.is_empty(), "the guard and the registries disagree on:\n{}", disagreements.join("\n"));
}

/// The oracles themselves, on cases whose answer is known from the registries and rules.
#[test]
fn the_oracles_know_the_rules() {
    for internal in [
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "100.64.0.1",
        "::1",
        "fd00:ec2::254",
        "::ffff:10.0.0.1",
        "2002:a00:1::",
        "64:ff9b::1",
        "192.0.2.1",
        "203.0.113.255",
        "2001:db8::1",
        "2001::1",
        "192.0.0.8",
    ] {
        assert!(targets::special_purpose(internal.parse().unwrap()), "{internal}");
    }
    for public in [
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700::1111",
        "2002:808:808::",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "192.0.0.9",
        "2001:3::1",
    ] {
        assert!(!targets::special_purpose(public.parse().unwrap()), "{public}");
    }
}
