//! Ingest benchmark (`make bench-ingest`; not a test). In one run, on this machine:
//!
//! 1. the ceiling: the model alone on already decoded, preprocessed tensors (batch 32);
//! 2. `imgsearch ingest` (the release binary) end to end into Milvus Lite + SQLite, with its
//!    peak RSS;
//! 3. the Python peer (`scripts/bench_python_peer.py`: PIL + numpy + onnxruntime + pymilvus,
//!    batch 32, same model, same images, same Milvus Lite);
//!
//! and prints a table with the ratios 2/1 and 2/3. The corpus is ≥ 1,000 distinct 1024×768
//! JPEGs made from the sample photos with crops, flips and colour changes (cached under
//! `target/bench-corpus`). Milvus comes from `scripts/milvus-lite.sh`, as for the tests.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, RgbImage};
use imgsearch::embed::preprocess::{self, DecodeLimits};
use imgsearch::embed::{EmbeddingModel, ModelConfig};

const CORPUS_SIZE: usize = 1008;
const BATCH: usize = 32;

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
    let corpus = root.join("target/bench-corpus");
    make_corpus(&root.join("data/sample/photos"), &corpus);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .expect("corpus folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();

    let ceiling = model_ceiling(&files);
    eprintln!("1. model alone: {ceiling:.1} images/s");
    let (ours, ours_rss) = imgsearch_ingest(root, &corpus, &milvus);
    eprintln!("2. imgsearch ingest: {ours:.1} images/s, peak RSS {ours_rss:.0} MiB");
    let (peer, peer_rss) = python_peer(root, &corpus, &milvus);
    eprintln!("3. Python peer: {peer:.1} images/s, peak RSS {peer_rss:.0} MiB");

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!();
    println!("Ingest of {} distinct 1024×768 JPEGs, {cores} cores, batch {BATCH}", files.len());
    println!();
    println!("| | images/s | peak RSS | ratio |");
    println!("|---|---:|---:|---|");
    println!("| 1. model alone on decoded tensors (ceiling) | {ceiling:.1} | | |");
    println!(
        "| 2. imgsearch ingest → Milvus Lite + SQLite | {ours:.1} | {ours_rss:.0} MiB | 2/1 = {:.2} |",
        ours / ceiling
    );
    println!(
        "| 3. Python peer (PIL + onnxruntime + pymilvus) | {peer:.1} | {peer_rss:.0} MiB | 2/3 = {:.2} |",
        ours / peer
    );
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

/// Images/s of the model alone, as `imgsearch ingest` runs it (all cores, batch 32), on
/// tensors prepared beforehand.
fn model_ceiling(files: &[PathBuf]) -> f64 {
    let model = EmbeddingModel::load(&ModelConfig { name: "efficientnet-lite0".into(), ..ModelConfig::default() })
        .expect("the model loads (run `make setup`)");
    let prepared: Vec<_> = files
        .iter()
        .take(256)
        .map(|p| {
            let bytes = std::fs::read(p).expect("read image");
            preprocess::prepare(&bytes, DecodeLimits::default(), model.input_size()).expect("prepare")
        })
        .collect();
    model.embed_batch(&prepared[..BATCH]).expect("warm-up batch");
    let rounds = 3;
    let started = Instant::now();
    for _ in 0..rounds {
        for batch in prepared.chunks(BATCH) {
            model.embed_batch(batch).expect("embed");
        }
    }
    (rounds * prepared.len()) as f64 / started.elapsed().as_secs_f64()
}

/// Images/s from the binary's own summary, and its peak RSS from the kernel's accounting of
/// waited-for children (it is the first child this process waits for).
fn imgsearch_ingest(root: &Path, corpus: &Path, milvus: &str) -> (f64, f64) {
    let work = tempfile::tempdir().expect("temp dir");
    let collection = format!("bench_rust_{}", std::process::id());
    let output = Command::new(env!("CARGO_BIN_EXE_imgsearch"))
        .args(["ingest", "--json", "--collection", &collection])
        .arg(corpus)
        .current_dir(root)
        .env("MILVUS_URI", milvus)
        .env("DATABASE_URL", format!("sqlite://{}", work.path().join("catalog.db").display()))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run imgsearch ingest");
    assert!(output.status.success(), "imgsearch ingest failed: {}", String::from_utf8_lossy(&output.stderr));
    let peak_kib =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).expect("getrusage").max_rss();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON summary");
    assert_eq!(report["failed"], 0, "{report}");
    (report["images_per_second"].as_f64().expect("images_per_second"), peak_kib as f64 / 1024.0)
}

fn python_peer(root: &Path, corpus: &Path, milvus: &str) -> (f64, f64) {
    let output = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("scripts/bench_python_peer.py"))
        .arg("--images")
        .arg(corpus)
        .args(["--uri", milvus, "--collection", &format!("bench_python_{}", std::process::id())])
        .arg("--model")
        .arg(root.join("model/efficientnet-lite0.onnx"))
        .output()
        .expect("run the Python peer");
    assert!(output.status.success(), "the Python peer failed: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON from the peer");
    (
        report["images_per_second"].as_f64().expect("images_per_second"),
        report["peak_rss_mib"].as_f64().expect("peak_rss_mib"),
    )
}
