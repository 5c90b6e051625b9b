//! One AFL++ binary for every target, chosen by the FUZZ_TARGET environment variable (one
//! instrumented link instead of five): `FUZZ_TARGET=decode cargo afl fuzz … target/…/fuzz`.

mod allocation;
mod targets;

fn main() {
    let name = std::env::var("FUZZ_TARGET").unwrap_or_default();
    let Some(&(_, target)) = targets::TARGETS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = targets::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!("set FUZZ_TARGET to one of: {}", names.join(", "));
        std::process::exit(2);
    };
    // `fuzz_nohook!`: afl.rs's `fuzz!` installs a panic hook that aborts on every panic, even
    // one the code under test catches and turns into an error (`prepare` contains a decoder's
    // panic); AFL++ would then call a handled input a crash while the corpus replay in
    // `make test` passes it. Without the hook only a panic that escapes the target aborts.
    afl::fuzz_nohook!(|data: &[u8]| target(data));
}
