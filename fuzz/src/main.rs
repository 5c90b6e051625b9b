//! One AFL++ binary for every target, chosen by the FUZZ_TARGET environment variable (one
//! instrumented link instead of five): `FUZZ_TARGET=decode cargo afl fuzz … target/…/fuzz`.

mod targets;

fn main() {
    let name = std::env::var("FUZZ_TARGET").unwrap_or_default();
    let Some(&(_, target)) = targets::TARGETS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = targets::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("set FUZZ_TARGET to one of: {}", names.join(", "));
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| target(data));
}
