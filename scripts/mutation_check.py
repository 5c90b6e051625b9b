"""Mutation check: the record that each test named below fails when the behaviour it stands
for is removed (docs/reliability.md cites this record). `make mutation-check` runs it.

For each mutation: one small change to the source in the working tree (whose src/ and tests/
must be as committed; the file is restored whatever happens), then the named test. "killed"
means the test failed on the mutated code, as it must; "SURVIVED" means it passed, and the test
does not back its promise. The unmutated tests run first, all on one build: each must pass, or
its row says BROKEN. Builds use the test target directory, so only imgsearch itself is rebuilt
per mutation. Prints a table with the commit; exits non-zero if any mutation survived or any
step broke."""
import os, subprocess, sys, time

# (what is removed, file, original text, mutated text, cargo test arguments)
MUTATIONS = [
    ("the 500-scan count", "src/embed/preprocess.rs",
     "if scans > MAX_SCANS as usize {", "if false {",
     ["--test", "image_formats", "a_progressive_jpeg_of_more_than_500_scans_is_refused"]),
    ("the TIFF directory check", "src/embed/preprocess.rs",
     "if format == ImageFormat::Tiff {", "if format == ImageFormat::Tiff && false {",
     ["--test", "image_formats", "small_tiffs_and_gifs_claiming_more_than_they_hold"]),
    ("the GIF first-frame check", "src/embed/preprocess.rs",
     "if format == ImageFormat::Gif {", "if format == ImageFormat::Gif && false {",
     ["--test", "image_formats", "small_tiffs_and_gifs_claiming_more_than_they_hold"]),
    ("zune-jpeg deciding what TurboJPEG refused", "src/embed/preprocess.rs",
     'decode_jpeg_in_full(bytes, limits).map_err(|zune| format!("TurboJPEG: {turbojpeg}; zune-jpeg: {zune}"))?',
     'return Err(format!("TurboJPEG: {turbojpeg}"))',
     ["--test", "image_formats", "jpegs_with_damage_a_browser_shows_are_decoded_not_refused"]),
    ("the surrogate-gap skip in prefix_successor", "src/store/filter.rs",
     "0xD800 => Some('\\u{E000}'),", "0xD800 => None,",
     ["--lib", "the_prefix_range_holds_exactly_the_strings_that_start_with_the_prefix"]),
    ("escaping line breaks in Milvus string literals", "src/store/filter.rs",
     "'\\n' => literal.push_str(\"\\\\n\"),", "",
     ["--lib", "a_string_literal_reads_back_as_its_text_and_cannot_be_escaped"]),
    ("reading 6to4's embedded IPv4 address", "src/source/urls.rs",
     "return internal_kind_v4(Ipv4Addr::from((bits >> 80) as u32));",
     "return internal_kind_v4(Ipv4Addr::from((bits >> 64) as u32));",
     ["--lib", "every_spelling_of_an_internal_address_is_refused"]),
    ("Teredo at 2001::/32 (the bug fixed in b32ca5a)", "src/source/urls.rs",
     "within(0x2001 << 112, 32)", "within(0x2001 << 96, 32)",
     ["--lib", "internal_addresses_are_refused_and_public_ones_pass"]),
    ("readiness's own 3 s patience (a call's 22 s instead)", "src/search/mod.rs",
     "pub const READINESS_PATIENCE: Duration = Duration::from_secs(3);",
     "pub const READINESS_PATIENCE: Duration = Duration::from_secs(22);",
     ["--test", "api", "readyz_turns_503_when_milvus_or_the_catalog_goes_away_and_back_when_they_return"]),
    ("the catalog's 30 s bound on every call (60 s instead)", "src/catalog/sql.rs",
     "const CALL_PATIENCE: Duration = Duration::from_secs(30);",
     "const CALL_PATIENCE: Duration = Duration::from_secs(60);",
     ["--test", "api", "a_catalog_that_refuses_or_stops_answering_gets_uploads_a_503_within_its_patience"]),
]


def run(arguments, cwd, log):
    """The test's exit code (None if it did not compile) and how long the build and run took."""
    started = time.monotonic()
    # A mutant's failing proptest case is not a regression of the real code: not persisted.
    environment = dict(os.environ, PROPTEST_DISABLE_FAILURE_PERSISTENCE="1")
    result = subprocess.run(["timeout", "1200", "cargo", "test", "--locked", *arguments],
                            cwd=cwd, env=environment, capture_output=True, text=True)
    log.write(result.stdout + result.stderr)
    log.flush()
    compiled = "could not compile" not in result.stderr
    return (result.returncode if compiled else None), time.monotonic() - started


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                            text=True, check=True).stdout.strip()
    # The record is of the commit: the code and tests must be as committed.
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "src", "tests"], cwd=root,
                             capture_output=True, text=True, check=True).stdout
    if changed.strip():
        sys.exit(f"src/ or tests/ have changes; commit or stash them first:\n{changed}")
    rows, failures = [], 0
    log_path = os.path.join(root, "target", "mutation-check.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        # First every test on the code as committed (one build), then each mutation in turn.
        passing = set()
        # MUTATIONS_MATCHING=text runs only the rows whose name holds it.
        chosen = [m for m in MUTATIONS if os.environ.get("MUTATIONS_MATCHING", "") in m[0]]
        for name, path, original, mutated, arguments in chosen:
            text = open(os.path.join(root, path)).read()
            if text.count(original) != 1:
                rows.append((name, arguments[-1], "BROKEN: the original text is not in the file once", 0))
                continue
            print(f"-- unmutated: {arguments[-1]}", file=log, flush=True)
            code, _ = run(arguments, root, log)
            if code != 0:
                rows.append((name, arguments[-1], "BROKEN: the test fails unmutated", 0))
                continue
            passing.add(name)
        failures += len(rows)
        for name, path, original, mutated, arguments in chosen:
            if name not in passing:
                continue
            source = os.path.join(root, path)
            text = open(source).read()
            try:
                with open(source, "w") as f:
                    f.write(text.replace(original, mutated))
                print(f"-- mutated ({name}): {arguments[-1]}", file=log, flush=True)
                code, took = run(arguments, root, log)
            finally:
                with open(source, "w") as f:
                    f.write(text)
            # A mutant that does not compile proves nothing about the test.
            verdict = "BROKEN: the mutant does not compile" if code is None else "killed" if code != 0 else "SURVIVED"
            failures += code is None or code == 0
            rows.append((name, arguments[-1], verdict, took))
            print(f"{verdict}: {name}", file=sys.stderr, flush=True)
    print(f"\nmake mutation-check, commit {commit}, {time.strftime('%Y-%m-%d')}\n")
    print("| removed | test | verdict | build and run |")
    print("|---|---|---|---:|")
    for name, test, verdict, took in rows:
        print(f"| {name} | `{test}` | {verdict} | {took:.0f} s |")
    print(f"\nlog: target/mutation-check.log")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
