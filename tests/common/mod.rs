//! Shared test fixtures: the real model, the run's shared Milvus Lite, a SQLite catalog per test,
//! and images made on the fly.
#![allow(dead_code)]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use image::ImageFormat;
use imgsearch::catalog::Catalog;
use imgsearch::embed::{DecodeLimits, EmbeddingModel, ModelConfig};
use imgsearch::index::ImageIndex;
use imgsearch::ingest::IngestOptions;
use imgsearch::store::{IndexSpec, MilvusStore};

pub mod databases;
pub mod formats;
pub mod outage;
pub mod s3;

/// The Milvus server the test run shares (started by scripts/milvus-lite.sh, which `make test` uses).
pub fn milvus_uri() -> String {
    std::env::var("IMGSEARCH_TEST_MILVUS_URI").unwrap_or_else(|_| {
        panic!("IMGSEARCH_TEST_MILVUS_URI is not set: run the tests with `make test`, or `scripts/milvus-lite.sh cargo test`")
    })
}

/// The real built-in model, loaded once per test binary.
pub fn model() -> Arc<EmbeddingModel> {
    static MODEL: OnceLock<Arc<EmbeddingModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let config = ModelConfig { name: "efficientnet-lite0".into(), threads: 2, ..Default::default() };
            Arc::new(EmbeddingModel::load(&config).expect("the built-in model loads (run `make setup` first)"))
        })
        .clone()
}

/// A collection name no other test (or earlier run against the same server) uses.
pub fn unique_collection(purpose: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("t_{purpose}_{}_{}_{}", std::process::id(), nanos, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// An image index on the shared Milvus and a fresh SQLite catalog in `dir`.
pub async fn index(dir: &Path) -> ImageIndex {
    let store = MilvusStore::connect(&milvus_uri(), None).await.expect("connect to the test Milvus");
    let catalog = Catalog::open(&format!("sqlite://{}", dir.join("catalog.db").display())).await.expect("open catalog");
    ImageIndex::new(store, catalog, model(), IndexSpec::default(), DecodeLimits::default())
}

/// An image index on the shared Milvus with no SQL catalog (`DATABASE_URL=none`, the
/// operator's default): Milvus's rows are the record, lookups by id look in `collection`.
pub async fn index_without_catalog(collection: &str) -> ImageIndex {
    let store = MilvusStore::connect(&milvus_uri(), None).await.expect("connect to the test Milvus");
    let catalog = Catalog::open_or_milvus(imgsearch::catalog::NO_DATABASE, &store, &[collection.to_string()])
        .await
        .expect("a catalog of Milvus's rows");
    ImageIndex::new(store, catalog, model(), IndexSpec::default(), DecodeLimits::default())
}

pub fn options(collection: &str) -> IngestOptions {
    IngestOptions::new(collection, 8, 2)
}

/// The repository's sample data (extracted by scripts/setup.sh).
pub fn sample_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample");
    assert!(dir.join("photos").is_dir(), "sample data missing: run `make setup`");
    dir
}

pub fn photo(name: &str) -> PathBuf {
    sample_dir().join("photos").join(name)
}

/// A fuzzing seed (fuzz/seeds/<target>/, made by scripts/make_fuzz_seeds.py).
pub fn fuzz_seed(target: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target).join(name)
}

/// An input a fuzzing run found (fuzz/regressions/<target>/), kept once fixed.
pub fn fuzz_regression(target: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(target).join(name)
}

/// Copies sample photos by name into `to`.
pub fn copy_photos(names: &[&str], to: &Path) {
    for name in names {
        std::fs::copy(photo(name), to.join(name)).expect("copy sample photo");
    }
}

/// Waits up to 30 s, checking every 100 ms, until `check` gives a value; fails naming `what`.
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A loopback port free when asked, for a child process to bind next (another process could
/// take it in between; the tests accept that).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// Serves `router` on a free loopback port until the test ends; its address and task.
pub async fn loopback_server(router: axum::Router) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let address = listener.local_addr().expect("its address");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (address, task)
}

/// The first `per_class` Fashion-MNIST sample images of every class, each with a flat name
/// unique across classes (`class-file.png`), in a stable order.
pub fn fashion_images(per_class: usize) -> Vec<(String, PathBuf)> {
    let mut classes: Vec<PathBuf> =
        std::fs::read_dir(sample_dir().join("fashion")).unwrap().map(|e| e.unwrap().path()).collect();
    classes.sort();
    let mut images = Vec::new();
    for class in classes {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&class).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files.into_iter().take(per_class) {
            let class_name = class.file_name().unwrap().to_string_lossy().to_string();
            images.push((format!("{class_name}-{}", file.file_name().unwrap().to_string_lossy()), file));
        }
    }
    images
}

/// Waits until `child` (an `imgsearch ingest` run) has indexed its first image in `catalog`;
/// fails the test if the run ends first or nothing is indexed within two minutes.
pub async fn wait_for_first_indexed(child: &mut tokio::process::Child, catalog: &Catalog, collection: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the run indexed nothing within 120 s and did not end");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before anything could be done mid-run");
        if catalog.count(collection, imgsearch::catalog::ImageStatus::Indexed).await.unwrap_or(0) > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

pub fn encode(image: &image::DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encode in memory");
    out.into_inner()
}

pub fn encode_jpeg(image: &image::DynamicImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    image.to_rgb8().write_with_encoder(encoder).expect("encode JPEG in memory");
    out
}

/// A valid PNG header announcing `width`×`height` pixels, followed by a tiny IDAT: a
/// decompression bomb's shape without its payload.
pub fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (&b"IHDR"[..], ihdr),
        (&b"IDAT"[..], vec![0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]),
        (&b"IEND"[..], vec![]),
    ] {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(&data);
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A JPEG start-of-image and JFIF header followed by garbage: recognisably JPEG, undecodable.
pub fn corrupt_jpeg() -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0];
    bytes.extend((0..2000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    bytes
}

/// An HTTP client for tests. reqwest is built without a default TLS crypto provider (the binary
/// installs ring at start), so tests install it too before building one.
/// An HTTP client for the tests' requests, each bounded: a server that stops answering fails
/// the test instead of hanging it.
pub fn http_client() -> reqwest::Client {
    imgsearch::source::install_crypto_provider();
    reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build().expect("an HTTP client")
}

/// The `.yaml` files of a folder, sorted (the samples, the broken samples).
pub fn yaml_files(folder: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Runs `command` to its end and returns what it printed, or fails the test naming `what` when
/// it has not ended within `deadline` (the child is then killed).
pub async fn output_within(
    command: &mut tokio::process::Command,
    deadline: std::time::Duration,
    what: &str,
) -> std::process::Output {
    command.kill_on_drop(true);
    match tokio::time::timeout(deadline, command.output()).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("{what}: could not be run: {e}")),
        Err(_) => panic!("{what}: still running after {deadline:?}"),
    }
}

/// [`output_within`] for a child already running with piped output.
pub async fn wait_within(
    child: tokio::process::Child,
    deadline: std::time::Duration,
    what: &str,
) -> std::process::Output {
    match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => panic!("{what}: still running after {deadline:?}"),
    }
}

/// [`output_within`] for tests without a runtime: the child's output is read on two threads
/// while it runs (a full pipe would otherwise stop it), and each read has the same deadline.
pub fn output_within_blocking(
    command: &mut std::process::Command,
    deadline: std::time::Duration,
    what: &str,
) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    let started = std::time::Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: could not be run: {e}"));
    let read_all = |pipe: Option<Box<dyn Read + Send>>| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            let _ = sender.send(bytes);
        });
        receiver
    };
    let stdout = read_all(child.stdout.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>));
    let stderr = read_all(child.stderr.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < deadline => std::thread::sleep(std::time::Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what}: still running after {deadline:?}");
            }
            Err(e) => panic!("{what}: {e}"),
        }
    };
    let collect = |receiver: std::sync::mpsc::Receiver<Vec<u8>>, stream: &str| {
        let left = deadline.saturating_sub(started.elapsed()).max(std::time::Duration::from_secs(1));
        receiver.recv_timeout(left).unwrap_or_else(|_| panic!("{what}: its {stream} stayed open after it exited"))
    };
    let stdout = collect(stdout, "stdout");
    let stderr = collect(stderr, "stderr");
    std::process::Output { status, stdout, stderr }
}

/// The result of a thread (a log reader, say), or a failed test naming `what` when it has not
/// finished within `deadline`: a pipe kept open by someone else must not hang the suite.
pub fn join_within<T>(handle: std::thread::JoinHandle<T>, deadline: std::time::Duration, what: &str) -> T {
    let started = std::time::Instant::now();
    while !handle.is_finished() {
        assert!(started.elapsed() < deadline, "{what}: not finished after {deadline:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    handle.join().unwrap_or_else(|_| panic!("{what}: panicked"))
}
