//! Ingest benchmark (`make bench-ingest`; not a test). In one run, on this machine:
//!
//! 1. the ceiling: the model alone on already decoded, preprocessed tensors, the better of one
//!    session on every core (batch 32) and one single-threaded session per core (batch 8);
//!
//! then for each of two corpora:
//!
//! 2. `imgsearch ingest` (the release binary, default settings) end to end into Milvus Lite +
//!    SQLite, with its peak RSS;
//! 3. the usual Python peer (`scripts/bench_python_peer.py`: PIL full decode + numpy +
//!    onnxruntime + pymilvus, batch 32, same model, same images, same Milvus Lite);
//! 4. the tuned Python peer (the same script with `--tuned`: PIL's draft decoding, which is
//!    libjpeg-turbo's DCT-scaled decoding, in a pool of 2 processes);
//!
//! and prints a table per corpus with the ratios 2/1, 2/3 and 2/4; and, first, what the checks
//! `prepare` runs on a JPEG before any decoder (the marker walk) cost against `prepare` itself. The corpora: ≥ 1,000
//! distinct 1024×768 JPEGs made from the sample photos with crops, flips and colour changes
//! (cached under `target/bench-corpus`), and 200 phone-size 4032×3024 JPEGs made from the
//! near-duplicate benchmark's real photographs (`target/bench-corpus-phone`). Milvus comes from
//! `scripts/milvus-lite.sh`, as for the tests.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, RgbImage};
use imgsearch::embed::preprocess::{self, DecodeLimits};
use imgsearch::embed::structure;
use imgsearch::embed::{EmbeddingModel, ModelConfig};

const CORPUS_SIZE: usize = 1008;
const PHONE_CORPUS_SIZE: usize = 200;
/// The usual batch: the Python peer's, and the ceiling's with one session.
const BATCH: usize = 32;
/// `imgsearch ingest`'s default batch (`--batch-size`).
const INGEST_BATCH: usize = 8;

fn main() {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: a benchmark is not
    // a test, so it only runs under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("ingest benchmark: run it with `make bench-ingest`");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let milvus = std::env::var("IMGSEARCH_TEST_MILVUS_URI")
        .expect("IMGSEARCH_TEST_MILVUS_URI is not set: run `make bench-ingest` (it starts Milvus Lite)");
    let small = root.join("target/bench-corpus");
    make_corpus(&root.join("data/sample/photos"), &small);
    let phone = root.join("target/bench-corpus-phone");
    make_phone_corpus(root, &phone);

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let small_files = jpegs(&small);
    let (one_session, per_core) = model_ceiling(&small_files, cores);
    let ceiling = one_session.max(per_core);
    eprintln!("1. model alone: {one_session:.1} images/s (one session), {per_core:.1} (one per core)");
    let corpora = [
        (format!("{} distinct 1024×768 JPEGs", small_files.len()), small),
        (format!("{} distinct 4032×3024 phone JPEGs (1 in 8 portrait by EXIF)", jpegs(&phone).len()), phone),
    ];
    let mut checks = String::from(
        "Checks before decoding: the JPEG marker walk (scans counted, end marker found) against the whole of \
         prepare, one core, files in memory\n\n\
         | corpus | marker walk, µs/image | prepare, µs/image | walk/prepare |\n|---|---:|---:|---:|",
    );
    for (name, corpus) in &corpora {
        let (walk, prepare) = checks_before_decoding(&jpegs(corpus));
        eprintln!("{name}: marker walk {walk:.1} µs, prepare {prepare:.0} µs per image");
        checks.push_str(&format!("\n| {name} | {walk:.1} | {prepare:.0} | {:.4} |", walk / prepare));
    }
    let mut tables = vec![checks];
    for (name, corpus) in &corpora {
        eprintln!("{name}:");
        let (ours, ours_rss) = imgsearch_ingest(root, corpus, &milvus);
        eprintln!("2. imgsearch ingest: {ours:.1} images/s, peak RSS {ours_rss:.0} MiB");
        let (usual, usual_rss) = python_peer(root, corpus, &milvus, false);
        eprintln!("3. Python peer: {usual:.1} images/s, peak RSS {usual_rss:.0} MiB");
        let (tuned, tuned_rss) = python_peer(root, corpus, &milvus, true);
        eprintln!("4. tuned Python peer: {tuned:.1} images/s, peak RSS {tuned_rss:.0} MiB");
        tables.push(format!(
            "Ingest of {name}, {cores} cores\n\n\
             | | images/s | peak RSS | ratio |\n\
             |---|---:|---:|---|\n\
             | 1. model alone on decoded tensors (ceiling: the better of a and b) | {ceiling:.1} | | |\n\
             | 1a. one session on all {cores} cores, batch {BATCH} | {one_session:.1} | | |\n\
             | 1b. {cores} single-threaded sessions side by side, batch {INGEST_BATCH} | {per_core:.1} | | |\n\
             | 2. imgsearch ingest → Milvus Lite + SQLite (defaults: batch {INGEST_BATCH}) | {ours:.1} | {ours_rss:.0} MiB | 2/1 = {:.2} |\n\
             | 3. usual Python peer (PIL full decode + onnxruntime + pymilvus, batch {BATCH}) | {usual:.1} | {usual_rss:.0} MiB | 2/3 = {:.2}, memory {:.2} |\n\
             | 4. tuned Python peer (PIL draft decode in 2 processes, same model and writes) | {tuned:.1} | {tuned_rss:.0} MiB | 2/4 = {:.2} |",
            ours / ceiling,
            ours / usual,
            ours_rss / usual_rss,
            ours / tuned,
        ));
    }
    for table in tables {
        println!();
        println!("{table}");
    }
}

fn jpegs(folder: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .expect("corpus folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    files
}

/// Microseconds per image of the walk over a JPEG's markers that `prepare` runs before any
/// decoder (`structure::jpeg_main_image_scans`: the scan count, the end-of-image marker), and of
/// the whole of `prepare` (that walk, decoding at reduced scale, resizing, normalising), over
/// the same files held in memory, on this thread.
fn checks_before_decoding(files: &[PathBuf]) -> (f64, f64) {
    let images: Vec<Vec<u8>> = files.iter().take(200).map(|p| std::fs::read(p).expect("read image")).collect();
    let input = imgsearch::embed::EFFICIENTNET_LITE0.input;
    let per_image = |rounds: usize, work: &dyn Fn(&[u8])| {
        let started = Instant::now();
        for _ in 0..rounds {
            for bytes in &images {
                work(bytes);
            }
        }
        started.elapsed().as_secs_f64() * 1e6 / (rounds * images.len()) as f64
    };
    let walk = per_image(20, &|bytes| {
        std::hint::black_box(structure::jpeg_main_image_scans(bytes).expect("a whole JPEG"));
    });
    let prepare = per_image(1, &|bytes| {
        std::hint::black_box(preprocess::prepare(bytes, DecodeLimits::default(), input).expect("prepare"));
    });
    (walk, prepare)
}

/// 200 phone-size JPEGs from the near-duplicate benchmark's real photographs, made by
/// `scripts/make_phone_corpus.py` with PIL (libjpeg-turbo, 4:2:0 chroma, as phones store them).
fn make_phone_corpus(root: &Path, corpus: &Path) {
    if std::fs::read_dir(corpus).map(|d| d.count()).unwrap_or(0) >= PHONE_CORPUS_SIZE {
        return;
    }
    eprintln!("making {PHONE_CORPUS_SIZE} phone-size benchmark images in {} (about a minute) ...", corpus.display());
    let status = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("scripts/make_phone_corpus.py"))
        .arg("--photos")
        .arg(root.join("data/near-duplicates/originals"))
        .arg("--out")
        .arg(corpus)
        .args(["--count", &PHONE_CORPUS_SIZE.to_string()])
        .status()
        .expect("run scripts/make_phone_corpus.py");
    assert!(status.success(), "scripts/make_phone_corpus.py failed");
}

/// Distinct photo-like JPEGs: each a random crop of a sample photo, maybe mirrored, with its
/// colours scaled, resized to 1024×768. Deterministic, so reruns measure the same images.
fn make_corpus(photos: &Path, corpus: &Path) {
    let existing = std::fs::read_dir(corpus).map(|d| d.count()).unwrap_or(0);
    if existing >= CORPUS_SIZE {
        return;
    }
    std::fs::create_dir_all(corpus).expect("create the corpus folder");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(photos)
        .expect("sample photos (run `make setup`)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    sources.sort();
    let sources: Vec<DynamicImage> = sources.iter().map(|p| image::open(p).expect("a sample photo decodes")).collect();
    eprintln!("making {CORPUS_SIZE} benchmark images in {} ...", corpus.display());
    let mut random = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        (random % 10_000) as f32 / 10_000.0
    };
    for i in 0..CORPUS_SIZE {
        let source = &sources[i % sources.len()];
        let (w, h) = (source.width() as f32, source.height() as f32);
        let (cw, ch) = (w * (0.6 + 0.4 * next()), h * (0.6 + 0.4 * next()));
        let (x, y) = ((w - cw) * next(), (h - ch) * next());
        let mut image = source.crop_imm(x as u32, y as u32, cw.max(8.0) as u32, ch.max(8.0) as u32);
        if next() < 0.5 {
            image = image.fliph();
        }
        let scale = [0.8 + 0.4 * next(), 0.8 + 0.4 * next(), 0.8 + 0.4 * next()];
        let mut rgb: RgbImage = image.resize_exact(1024, 768, FilterType::Triangle).to_rgb8();
        for pixel in rgb.pixels_mut() {
            for (channel, factor) in pixel.0.iter_mut().zip(scale) {
                *channel = (f32::from(*channel) * factor).min(255.0) as u8;
            }
        }
        let mut bytes = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(rgb).write_to(&mut bytes, ImageFormat::Jpeg).expect("encode JPEG");
        std::fs::write(corpus.join(format!("bench-{i:05}.jpg")), bytes.into_inner()).expect("write JPEG");
    }
}

/// Images/s of the model alone on tensors prepared beforehand: the better of one session on
/// every core, batch 32, batch after batch (the usual way), and one single-threaded session per
/// core, batches side by side (as `imgsearch ingest` runs them, with its default batch), so the
/// ceiling is the model's best.
fn model_ceiling(files: &[PathBuf], cores: usize) -> (f64, f64) {
    let prepared: Vec<_> = files
        .iter()
        .take(256)
        .map(|p| {
            let bytes = std::fs::read(p).expect("read image");
            preprocess::prepare(&bytes, DecodeLimits::default(), imgsearch::embed::EFFICIENTNET_LITE0.input)
                .expect("prepare")
        })
        .collect();
    let rounds = 3;
    let measure = |sessions: usize, threads: usize, batch: usize| {
        let config = ModelConfig { name: "efficientnet-lite0".into(), sessions, threads, ..ModelConfig::default() };
        let model = EmbeddingModel::load(&config).expect("the model loads (run `make setup`)");
        let batches: Vec<_> = prepared.chunks(batch).collect();
        let run = |batches: &[&[imgsearch::embed::PreparedImage]]| {
            std::thread::scope(|scope| {
                for part in 0..sessions {
                    let model = &model;
                    scope.spawn(move || {
                        for batch in batches.iter().skip(part).step_by(sessions) {
                            model.embed_batch(batch).expect("embed");
                        }
                    });
                }
            })
        };
        run(&batches[..sessions.min(batches.len())]); // warm-up: one batch per session
        let started = Instant::now();
        for _ in 0..rounds {
            run(&batches);
        }
        (rounds * prepared.len()) as f64 / started.elapsed().as_secs_f64()
    };
    (measure(1, 0, BATCH), measure(cores, 1, INGEST_BATCH))
}

/// Images/s from the binary's own summary, and its peak RSS.
fn imgsearch_ingest(root: &Path, corpus: &Path, milvus: &str) -> (f64, f64) {
    let work = tempfile::tempdir().expect("temp dir");
    let collection = format!("bench_rust_{}", std::process::id());
    let mut command = Command::new(env!("CARGO_BIN_EXE_imgsearch"));
    command
        .args(["ingest", "--json", "--collection", &collection])
        .arg(corpus)
        .current_dir(root)
        .env("MILVUS_URI", milvus)
        .env("DATABASE_URL", format!("sqlite://{}", work.path().join("catalog.db").display()))
        .env("RUST_LOG", "warn");
    let (stdout, peak_mib) = run_measuring_peak_rss(command, "imgsearch ingest");
    let report: serde_json::Value = serde_json::from_slice(&stdout).expect("JSON summary");
    assert_eq!(report["failed"], 0, "{report}");
    (report["images_per_second"].as_f64().expect("images_per_second"), peak_mib)
}

fn python_peer(root: &Path, corpus: &Path, milvus: &str, tuned: bool) -> (f64, f64) {
    let mut command = Command::new(root.join(".venv/bin/python"));
    command.arg(root.join("scripts/bench_python_peer.py"));
    if tuned {
        command.arg("--tuned");
    }
    command
        .arg("--images")
        .arg(corpus)
        .args(["--uri", milvus, "--collection", &format!("bench_python_{}", std::process::id())])
        .arg("--model")
        .arg(root.join("model/efficientnet-lite0.onnx"));
    let (stdout, peak_mib) =
        run_measuring_peak_rss(command, if tuned { "the tuned Python peer" } else { "the Python peer" });
    let report: serde_json::Value = serde_json::from_slice(&stdout).expect("JSON from the peer");
    (report["images_per_second"].as_f64().expect("images_per_second"), peak_mib)
}

/// Runs a child to completion; its stdout and its peak RSS in MiB, counting the processes it
/// starts (the tuned peer's decoding pool). The peak is the larger of the kernel's high-water
/// mark of the child's own address space (`VmHWM`, which starts afresh at exec) and the highest
/// sum of `VmRSS` over the child and its descendants, both read every 20 ms while it runs.
/// (`getrusage` is no use here: a child's `ru_maxrss` starts from this process's RSS at spawn
/// time, the loaded models and tensors of the ceiling measurement.)
fn run_measuring_peak_rss(mut command: Command, what: &str) -> (Vec<u8>, f64) {
    // stderr to a file: a pipe nobody reads would block a chatty child once it is full.
    let mut stderr_file = tempfile::tempfile().expect("a temp file for the child's stderr");
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(stderr_file.try_clone().expect("clone the stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut out).map(|_| out)
    });
    let mut peak_kib = 0u64;
    while child.try_wait().expect("wait for the child").is_none() {
        let own_peak = status_kib(child.id(), "VmHWM:");
        let tree: u64 = process_tree(child.id()).into_iter().filter_map(|pid| status_kib(pid, "VmRSS:")).sum();
        peak_kib = peak_kib.max(own_peak.unwrap_or(0)).max(tree);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = child.wait().expect("wait for the child");
    let stdout = reader.join().expect("stdout reader").expect("read stdout");
    let mut stderr = String::new();
    std::io::Seek::rewind(&mut stderr_file).expect("rewind the stderr file");
    std::io::Read::read_to_string(&mut stderr_file, &mut stderr).expect("read the child's stderr");
    assert!(status.success(), "{what} failed: {stderr}");
    assert!(peak_kib > 0, "no VmHWM reading for {what}");
    (stdout, peak_kib as f64 / 1024.0)
}

/// A field of `/proc/<pid>/status` in KiB, if the process is still there.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix(field))?.trim().trim_end_matches("kB").trim().parse().ok()
}

/// `pid` and its descendants, from each thread's `children` list.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut found = vec![pid];
    let mut next = 0;
    while next < found.len() {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", found[next])).into_iter().flatten().flatten();
        for task in tasks {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            found.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
        next += 1;
    }
    found
}
