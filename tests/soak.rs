//! The soak: a real `imgsearch serve` and repeated `imgsearch ingest --prune` runs against their
//! own Milvus Lite and PostgreSQL, under continuous load — searches at concurrency 4, uploads
//! and deletes, a folder whose files come and go — while Milvus is killed (SIGKILL) and
//! restarted twice and PostgreSQL is stopped at once (as a crash) and restarted once.
//!
//! At the end: every acknowledged upload is catalogued, has its vector and is found by its own
//! picture; every acknowledged delete is gone from both; Milvus and the catalog agree exactly
//! (no vector without a row, none twice); the folder's files are exactly the folder's rows;
//! every failed request fell inside an outage and was a 503 with `Retry-After`; service came
//! back after each outage. Like a client honouring `Retry-After`, the load sends a write answered
//! 503 again until it is acknowledged. The serve process's memory is reported (start, peak, end), not
//! asserted: memory is for benchmarks to judge.
//!
//! `SOAK_SECONDS` sets the length: 100 by default (in `make test`), 600 for `make soak`, which
//! also prints the table docs/reliability.md carries. Loopback only; everything stops by itself.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Cursor};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imgsearch::catalog::{Catalog, ImageStatus, ListFilter};
use imgsearch::store::MilvusStore;

const COLLECTION: &str = "soak";
/// How long each outage lasts before the server comes back.
const DOWN_FOR: Duration = Duration::from_secs(8);
/// How long after a restart service must be back (Milvus Lite reopens and reloads in a few
/// seconds; the clients reconnect with backoff).
const RECOVERY_LIMIT: Duration = Duration::from_secs(45);

/// Waits for `ready` until `limit`, failing with `what` if it never comes.
fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The soak's own Milvus Lite: killed with SIGKILL and restarted on the same data and port.
struct Milvus {
    folder: PathBuf,
    port: u16,
    child: Option<Child>,
    /// Starts so far, to give each its own log.
    starts: u32,
}

impl Milvus {
    fn start(folder: &Path) -> Self {
        std::fs::create_dir_all(folder).expect("Milvus's folder");
        let mut milvus = Self { folder: folder.to_path_buf(), port: common::free_port(), child: None, starts: 0 };
        milvus.restart();
        milvus
    }

    fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        self.starts += 1;
        let log = self.folder.join(format!("milvus-{}.log", self.starts));
        let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/milvus-lite");
        let mut command = Command::new(&binary);
        command.args(["server", "--data-dir"]).arg(self.folder.join("db")).args([
            "--host",
            "127.0.0.1",
            "--port",
            &self.port.to_string(),
        ]);
        let output = std::fs::File::create(&log).expect("a log file");
        // It says "listening" on stdout.
        let child = command
            .stdout(output.try_clone().expect("a second handle on the log"))
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({e}): run `make setup`", binary.display()));
        self.child = Some(child);
        wait_until("Milvus Lite to listen", Duration::from_secs(60), || {
            std::fs::read_to_string(&log).is_ok_and(|text| text.contains("listening"))
        });
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL: no shutdown, no flush
            let _ = child.wait();
        }
    }
}

impl Drop for Milvus {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The soak's own PostgreSQL (scripts/postgres.sh), stopped in immediate mode: a crash.
struct Postgres {
    folder: PathBuf,
    port: u16,
}

impl Postgres {
    fn script(args: &[&str]) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres.sh");
        let status = Command::new(&script).args(args).status().expect("run scripts/postgres.sh");
        assert!(status.success(), "scripts/postgres.sh {args:?} failed");
    }

    fn start(folder: &Path) -> Self {
        let postgres = Self { folder: folder.to_path_buf(), port: common::free_port() };
        Self::script(&["init", &postgres.dir()]);
        postgres.restart();
        postgres
    }

    fn dir(&self) -> String {
        self.folder.display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://imgsearch@127.0.0.1:{}/postgres", self.port)
    }

    fn restart(&self) {
        Self::script(&["start", &self.dir(), &self.port.to_string()]);
    }

    fn crash(&self) {
        Self::script(&["stop", &self.dir()]);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.crash();
    }
}

/// What one request came to.
#[derive(Debug, Clone)]
struct Outcome {
    at: Instant,
    kind: &'static str,
    /// The HTTP status, or 0 when no answer came (refused, reset, timed out).
    status: u16,
    /// The `Retry-After` header's seconds, when it held a number.
    retry_after: Option<u64>,
    detail: String,
    /// From sending the request to its answer (or failure).
    took: Duration,
}

#[derive(Debug, Clone)]
struct Outage {
    what: &'static str,
    from: Instant,
    /// When the server was started again.
    restarted: Instant,
    /// When requests of every kind succeeded again (set after the run, from the outcomes).
    recovered: Option<Instant>,
}

#[derive(Default)]
struct Record {
    outcomes: Vec<Outcome>,
    /// Acknowledged uploads (201) by id, with the bytes sent.
    uploaded: HashMap<i64, Vec<u8>>,
    /// Acknowledged deletes (204).
    deleted: HashSet<i64>,
    /// Ingest runs: (started, ended, succeeded, summary).
    ingests: Vec<(Instant, Instant, bool, String)>,
    folder_added: usize,
    folder_removed: usize,
    rss_kib: Vec<(Instant, u64)>,
    /// Every upload attempt: (sent, answered, status, id acknowledged, the picture's fingerprint),
    /// to tell, when an upload goes missing, which outage its attempts met.
    upload_attempts: Vec<(Instant, Instant, u16, Option<i64>, u64)>,
    /// Every delete attempt: (sent, answered, status, id), to tell, when a deleted image keeps
    /// its vector, which outage its attempts met.
    delete_attempts: Vec<(Instant, Instant, u16, i64)>,
}

fn fingerprint(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// splitmix64: a seeded, repeatable stream of choices (the soak's run is the same every time
/// but for timing).
struct Choices(u64);

impl Choices {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A picture no one has uploaded before: a sample image, enlarged, with a patch of noise.
fn unique_picture(base: &Path, rng: &mut Choices) -> Vec<u8> {
    let picture = image::open(base).expect("a sample image").to_rgb8();
    let mut picture = image::imageops::resize(&picture, 96, 96, image::imageops::FilterType::Triangle);
    let (x0, y0) = (rng.below(80) as u32, rng.below(80) as u32);
    for x in x0..x0 + 16 {
        for y in y0..y0 + 16 {
            let [r, g, b, ..] = rng.next().to_le_bytes();
            picture.put_pixel(x, y, image::Rgb([r, g, b]));
        }
    }
    let mut bytes = Cursor::new(Vec::new());
    picture.write_to(&mut bytes, image::ImageFormat::Png).expect("encode");
    bytes.into_inner()
}

fn image_form(bytes: &[u8]) -> reqwest::multipart::Form {
    let part = reqwest::multipart::Part::bytes(bytes.to_vec()).file_name("q.png").mime_str("image/png").expect("mime");
    reqwest::multipart::Form::new().part("image", part)
}

/// How long a client waits before its next request: what a refusal's `Retry-After` says (a
/// failure without one waits 1 s), nothing after a success.
fn retry_wait(outcome: &Outcome) -> Duration {
    if (200..300).contains(&outcome.status) {
        Duration::ZERO
    } else {
        Duration::from_secs(outcome.retry_after.unwrap_or(1))
    }
}

async fn outcome(
    kind: &'static str,
    sent: Instant,
    answer: Result<reqwest::Response, reqwest::Error>,
) -> (Outcome, Option<String>) {
    let at = Instant::now();
    let took = at - sent;
    match answer {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse().ok());
            let body = response.text().await.unwrap_or_default();
            let detail = if status >= 300 { body.chars().take(300).collect() } else { String::new() };
            (Outcome { at, kind, status, retry_after, detail, took }, Some(body))
        }
        Err(error) => (Outcome { at, kind, status: 0, retry_after: None, detail: format!("{error:#}"), took }, None),
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn imgsearch(args: &[&str], milvus: &str, catalog: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_imgsearch"));
    command
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("MILVUS_URI", milvus)
        .env("DATABASE_URL", catalog)
        .env("IMGSEARCH_COLLECTION", COLLECTION)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

/// Runs `imgsearch ingest FOLDER --prune`, bounded; returns whether it succeeded and the last
/// line of its log. The log is read while it runs: a run that warns a lot through an outage
/// would otherwise fill the pipe and stop.
fn ingest_folder(folder: &Path, milvus: &str, catalog: &str) -> (bool, String) {
    let mut child =
        imgsearch(&["ingest", &folder.display().to_string(), "--prune", "--batch-size", "16"], milvus, catalog)
            .args(["--collection", COLLECTION])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start imgsearch ingest");
    let pipe = child.stderr.take().expect("a piped stderr");
    let log = std::thread::spawn(move || {
        std::io::BufReader::new(pipe).lines().map_while(Result::ok).last().unwrap_or_default()
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let last: String = common::join_within(log, Duration::from_secs(10), "reading an ingest's log after it ended")
        .chars()
        .take(300)
        .collect();
    match status {
        Some(status) => (status.success(), last),
        None => (false, format!("did not finish within 180 s (last said: {last})")),
    }
}

#[test]
fn under_load_through_milvus_and_catalog_crashes_nothing_acknowledged_is_lost() {
    let seconds: u64 = std::env::var("SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    let length = Duration::from_secs(seconds.max(60));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    imgsearch::source::install_crypto_provider();

    // As root PostgreSQL runs as its own user, which must reach the folder: under /tmp.
    let work = tempfile::Builder::new().prefix("imgsearch-soak").tempdir_in("/tmp").expect("a work folder");
    let mut milvus = Milvus::start(&work.path().join("milvus"));
    let postgres = Postgres::start(&work.path().join("postgres"));
    let (milvus_uri, catalog_url) = (milvus.uri(), postgres.url());

    // A folder of 40 images; 200 more wait to be added while the soak runs.
    let folder = work.path().join("images");
    std::fs::create_dir_all(&folder).unwrap();
    let mut pool = common::fashion_images(24);
    let bases: Vec<PathBuf> = pool.iter().map(|(_, path)| path.clone()).collect();
    // Where each name came from, so a removed file can be added again later.
    let sources: HashMap<String, PathBuf> = pool.iter().cloned().collect();
    let mut waiting = pool.split_off(40);
    for (name, path) in &pool {
        std::fs::copy(path, folder.join(name)).unwrap();
    }
    let (first, summary) = ingest_folder(&folder, &milvus_uri, &catalog_url);
    assert!(first, "the first ingest: {summary}");

    let port = common::free_port();
    let log_path = work.path().join("serve.log");
    let mut server = imgsearch(&["serve"], &milvus_uri, &catalog_url)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--upload-dir")
        .arg(work.path().join("uploads"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("start imgsearch serve");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready = client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "imgsearch serve ready within 120 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    let record = Arc::new(Mutex::new(Record::default()));
    let started = Instant::now();
    let wall_start = std::time::SystemTime::now();
    let end = started + length;
    let queries: Vec<Vec<u8>> = bases.iter().step_by(7).map(|p| std::fs::read(p).unwrap()).collect();

    // The load, on the runtime's threads, until `end`.
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (client, base, record, queries) = (client.clone(), base.clone(), record.clone(), queries.clone());
        tasks.push(runtime.spawn(async move {
            let mut n = worker;
            while Instant::now() < end {
                let query = &queries[n % queries.len()];
                n += 4;
                let sent = Instant::now();
                let answer = client.post(format!("{base}/v1/search?top_k=5")).multipart(image_form(query)).send().await;
                let (outcome, _) = outcome("search", sent, answer).await;
                let wait = retry_wait(&outcome);
                record.lock().unwrap().outcomes.push(outcome);
                tokio::time::sleep(wait).await;
            }
        }));
    }
    {
        let (client, base, record, bases) = (client.clone(), base.clone(), record.clone(), bases.clone());
        tasks.push(runtime.spawn(async move {
            // A write answered 503 is sent again, as its Retry-After asks, until it is
            // acknowledged: a delete that failed half-way leaves its row `pending` (hidden from
            // searches, its vector perhaps still there) for the retry to finish. Outstanding
            // retries are finished after the load, within a deadline.
            enum Write {
                Delete(i64),
                Upload(Vec<u8>),
            }
            let mut rng = Choices(18);
            let mut retry: Option<Write> = None;
            let settle_by = end + RECOVERY_LIMIT * 2;
            while Instant::now() < end || (retry.is_some() && Instant::now() < settle_by) {
                let write = match retry.take() {
                    Some(write) => write,
                    None => {
                        let deletable: Vec<i64> = {
                            let record = record.lock().unwrap();
                            record.uploaded.keys().filter(|id| !record.deleted.contains(id)).copied().collect()
                        };
                        if !deletable.is_empty() && rng.chance(30) {
                            Write::Delete(deletable[rng.below(deletable.len())])
                        } else {
                            Write::Upload(unique_picture(&bases[rng.below(bases.len())], &mut rng))
                        }
                    }
                };
                let wait: Duration;
                match write {
                    Write::Delete(id) => {
                        let sent = Instant::now();
                        let answer = client.delete(format!("{base}/v1/images/{id}")).send().await;
                        let (outcome, _) = outcome("delete", sent, answer).await;
                        wait = retry_wait(&outcome);
                        let mut record = record.lock().unwrap();
                        record.delete_attempts.push((sent, Instant::now(), outcome.status, id));
                        if outcome.status == 204 {
                            record.deleted.insert(id);
                        } else {
                            retry = Some(Write::Delete(id));
                        }
                        record.outcomes.push(outcome);
                    }
                    Write::Upload(picture) => {
                        let sent = Instant::now();
                        let answer =
                            client.post(format!("{base}/v1/images")).multipart(image_form(&picture)).send().await;
                        let (outcome, body) = outcome("upload", sent, answer).await;
                        wait = retry_wait(&outcome);
                        let id = body
                            .filter(|_| outcome.status == 201)
                            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                            .and_then(|v| v["id"].as_i64());
                        let mut record = record.lock().unwrap();
                        record.upload_attempts.push((sent, Instant::now(), outcome.status, id, fingerprint(&picture)));
                        match id {
                            Some(id) => {
                                record.uploaded.insert(id, picture);
                            }
                            None => retry = Some(Write::Upload(picture)),
                        }
                        record.outcomes.push(outcome);
                    }
                }
                tokio::time::sleep(wait.max(Duration::from_millis(150))).await;
            }
            assert!(retry.is_none(), "a write answered 503 was still refused {:?} after the load", settle_by - end);
        }));
    }
    // The folder changes and is ingested again, over and over.
    let churn = {
        let (record, folder, milvus_uri, catalog_url) =
            (record.clone(), folder.clone(), milvus_uri.clone(), catalog_url.clone());
        std::thread::spawn(move || {
            let mut rng = Choices(1818);
            while Instant::now() + Duration::from_secs(15) < end {
                let mut present: Vec<PathBuf> =
                    std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()).collect();
                present.sort();
                for _ in 0..2 {
                    if present.len() > 10 {
                        let gone = present.remove(rng.below(present.len()));
                        std::fs::remove_file(&gone).unwrap();
                        record.lock().unwrap().folder_removed += 1;
                        // Back at the end of the queue: a long soak keeps adding files.
                        let name = gone.file_name().unwrap().to_string_lossy().into_owned();
                        waiting.insert(0, (name.clone(), sources[&name].clone()));
                    }
                }
                for _ in 0..4 {
                    if let Some((name, path)) = waiting.pop() {
                        std::fs::copy(path, folder.join(name)).unwrap();
                        record.lock().unwrap().folder_added += 1;
                    }
                }
                let from = Instant::now();
                let (ok, summary) = ingest_folder(&folder, &milvus_uri, &catalog_url);
                record.lock().unwrap().ingests.push((from, Instant::now(), ok, summary));
                std::thread::sleep(Duration::from_secs(3));
            }
        })
    };

    // The faults, on this thread, at fixed points of the run; memory sampled meanwhile.
    let server_pid = server.id();
    let mut outages = Vec::new();
    let schedule = [(0.2, "Milvus killed"), (0.45, "PostgreSQL crashed"), (0.7, "Milvus killed")];
    for (at, what) in schedule {
        let when = started + length.mul_f64(at);
        while Instant::now() < when {
            if let Some(kib) = rss_kib(server_pid) {
                record.lock().unwrap().rss_kib.push((Instant::now(), kib));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let from = Instant::now();
        if what.starts_with("Milvus") {
            milvus.kill()
        } else {
            postgres.crash()
        }
        std::thread::sleep(DOWN_FOR);
        if what.starts_with("Milvus") {
            milvus.restart()
        } else {
            postgres.restart()
        }
        outages.push(Outage { what, from, restarted: Instant::now(), recovered: None });
    }
    while Instant::now() < end {
        if let Some(kib) = rss_kib(server_pid) {
            record.lock().unwrap().rss_kib.push((Instant::now(), kib));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for task in tasks {
        runtime.block_on(task).expect("a load task panicked");
    }
    churn.join().expect("the folder task panicked");

    // Afterwards: one more ingest must succeed, and then everything must agree.
    let (last, summary) = ingest_folder(&folder, &milvus_uri, &catalog_url);
    assert!(last, "the final ingest after the faults: {summary}");
    let record = Arc::try_unwrap(record).ok().expect("every task ended").into_inner().unwrap();

    // When service came back after each outage: the first success of every kind after it.
    for outage in &mut outages {
        let back = ["search", "upload"].iter().map(|kind| {
            record
                .outcomes
                .iter()
                .filter(|o| o.kind == *kind && o.at > outage.restarted && o.status < 300)
                .map(|o| o.at)
                .min()
        });
        outage.recovered = back.collect::<Option<Vec<Instant>>>().and_then(|times| times.into_iter().max());
    }
    let in_outage = |at: Instant| outages.iter().any(|o| at >= o.from && at <= o.recovered.unwrap_or(end));

    // Failures outside outages, or inside them answered otherwise than 503 + Retry-After.
    let bad: Vec<&Outcome> = record
        .outcomes
        .iter()
        .filter(|o| o.status >= 300 || o.status == 0)
        .filter(|o| !in_outage(o.at) || o.status != 503 || !o.retry_after.is_some_and(|s| (1..=60).contains(&s)))
        .collect();
    let failed_ingests: Vec<_> = record
        .ingests
        .iter()
        .filter(|(from, to, ok, _)| {
            !ok && !outages.iter().any(|o| *from <= o.recovered.unwrap_or(end) && *to >= o.from)
        })
        .collect();

    let (catalog, store) = runtime.block_on(async {
        let catalog = Catalog::open(&catalog_url).await.expect("the catalog after the soak");
        let store = MilvusStore::connect(&milvus_uri, None).await.expect("Milvus after the soak");
        (catalog, store)
    });
    let mut rows = BTreeMap::new();
    runtime.block_on(async {
        let mut after = 0;
        loop {
            let page = catalog.list(COLLECTION, &ListFilter::default(), after, 1000).await.expect("list the catalog");
            let Some(last) = page.last() else { break };
            after = last.id;
            for row in page {
                rows.insert(row.id, row);
            }
        }
    });
    let indexed: Vec<i64> = rows.values().filter(|r| r.status == ImageStatus::Indexed).map(|r| r.id).collect();
    let (milvus_count, vectors, without_vector) = runtime.block_on(async {
        let count = store.count(COLLECTION).await.expect("Milvus count");
        let mut found = 0;
        let mut without_vector = Vec::new();
        for chunk in indexed.chunks(500) {
            let held = store.vectors(COLLECTION, chunk).await.expect("read vectors");
            found += held.len();
            without_vector.extend(chunk.iter().filter(|id| !held.contains_key(id)).map(|id| rows[id].uri.clone()));
        }
        (count, found, without_vector)
    });

    let mut acknowledged: Vec<i64> =
        record.uploaded.keys().filter(|id| !record.deleted.contains(id)).copied().collect();
    acknowledged.sort();
    // Each acknowledged upload must be indexed, not merely have a row.
    let not_indexed: Vec<i64> = acknowledged
        .iter()
        .filter(|id| rows.get(id).is_none_or(|row| row.status != ImageStatus::Indexed))
        .copied()
        .collect();
    // Milvus and the catalog, row by row: each indexed row's vector carries the row's URI and
    // content hash.
    let disagreeing: Vec<String> = runtime.block_on(async {
        let mut disagreeing = Vec::new();
        for chunk in indexed.chunks(imgsearch::store::STORED_PER_QUERY) {
            let ids: Vec<String> = chunk.iter().map(i64::to_string).collect();
            let filter = format!("id in [{}]", ids.join(","));
            let stored = store
                .stored_images(COLLECTION, 0, i64::MAX, Some(&filter), chunk.len())
                .await
                .expect("read what Milvus stores");
            let answered: HashSet<i64> = stored.iter().map(|image| image.id).collect();
            for id in chunk.iter().filter(|id| !answered.contains(id)) {
                disagreeing.push(format!("id {id}: indexed in the catalog, not read back from Milvus"));
            }
            for image in stored {
                let row = &rows[&image.id];
                if image.uri != row.uri || Some(&image.content_hash) != row.content_hash.as_ref() {
                    disagreeing.push(format!(
                        "id {}: Milvus {:?} {:?}, catalog {:?} {:?}",
                        image.id, image.uri, image.content_hash, row.uri, row.content_hash
                    ));
                }
            }
        }
        disagreeing
    });
    let kept_deleted: Vec<i64> = record.deleted.iter().filter(|id| rows.contains_key(id)).copied().collect();
    let deleted_vectors = runtime.block_on(async {
        let deleted: Vec<i64> = record.deleted.iter().copied().collect();
        let mut found = Vec::new();
        for chunk in deleted.chunks(500) {
            found.extend(store.vectors(COLLECTION, chunk).await.expect("read vectors").into_keys());
        }
        found
    });
    // Found by their own picture: every acknowledged upload, searched again.
    let mut unfound = Vec::new();
    runtime.block_on(async {
        for id in &acknowledged {
            let answer = client
                .post(format!("{base}/v1/search?top_k=5"))
                .multipart(image_form(&record.uploaded[id]))
                .send()
                .await
                .expect("search after the soak");
            let body: serde_json::Value = answer.json().await.expect("a search answer");
            let ids: Vec<i64> =
                body["results"].as_array().into_iter().flatten().filter_map(|r| r["id"].as_i64()).collect();
            if !ids.contains(id) {
                unfound.push(*id);
            }
        }
    });
    let folder_uris: HashSet<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path().canonicalize().unwrap().display().to_string())
        .collect();
    let folder_prefix = folder.canonicalize().unwrap().display().to_string();
    let folder_rows: HashSet<String> =
        rows.values().filter(|r| r.uri.starts_with(&folder_prefix)).map(|r| r.uri.clone()).collect();
    let _ = server.kill();
    let _ = server.wait();

    // The table: what was held, what was survived, what was lost.
    let count = |kind: &str, ok: bool| {
        record.outcomes.iter().filter(|o| o.kind == kind && (o.status < 300 && o.status != 0) == ok).count()
    };
    let rss: Vec<u64> = record.rss_kib.iter().map(|(_, kib)| *kib).collect();
    let mib = |kib: Option<&u64>| kib.map(|k| format!("{:.0} MiB", *k as f64 / 1024.0)).unwrap_or("-".into());
    // The line the published table starts with: what ran, on which commit (`make soak` names
    // it, and whether src/ or tests/ had changes), and the day.
    let run = std::env::var("SOAK_RUN").unwrap_or_else(|_| "commit not named (run through make soak)".into());
    println!("\nmake soak, SOAK_SECONDS={}, {run}", length.as_secs());
    println!("\n| soak, {} s | figure |", length.as_secs());
    println!("|---|---|");
    for kind in ["search", "upload", "delete"] {
        println!(
            "| {kind}: answered / failed (all failures 503 + Retry-After inside outages) | {} / {} |",
            count(kind, true),
            count(kind, false)
        );
    }
    let millis = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let mut calm: Vec<Duration> =
        record.outcomes.iter().filter(|o| o.kind == "search" && !in_outage(o.at)).map(|o| o.took).collect();
    calm.sort();
    let quantile = |q: f64| calm.get(((calm.len() as f64 - 1.0) * q).round() as usize).copied().map(millis);
    println!(
        "| search latency outside outages: p50 / p99 / max | {} / {} / {} |",
        quantile(0.5).unwrap_or_default(),
        quantile(0.99).unwrap_or_default(),
        quantile(1.0).unwrap_or_default()
    );
    let longest_in_outage = record.outcomes.iter().filter(|o| in_outage(o.at)).map(|o| o.took).max();
    println!(
        "| longest wait for any answer during an outage | {} |",
        longest_in_outage.map(millis).unwrap_or_default()
    );
    let ingests_ok = record.ingests.iter().filter(|i| i.2).count();
    println!(
        "| folder ingests with --prune: succeeded / failed (overlapping an outage) | {ingests_ok} / {} |",
        record.ingests.len() - ingests_ok
    );
    println!("| folder files added / removed | {} / {} |", record.folder_added, record.folder_removed);
    for outage in &outages {
        let back = outage
            .recovered
            .map(|r| format!("{:.1} s", (r - outage.restarted).as_secs_f64()))
            .unwrap_or("never".into());
        let during = |ok: bool| {
            record
                .outcomes
                .iter()
                .filter(|o| o.at >= outage.from && o.at <= outage.recovered.unwrap_or(end))
                .filter(|o| (o.status < 300 && o.status != 0) == ok)
                .count()
        };
        println!(
            "| {} at {:.0} s, down {} s: service back after restart in; requests answered / failed meanwhile | {back}; {} / {} |",
            outage.what,
            (outage.from - started).as_secs_f64(),
            DOWN_FOR.as_secs(),
            during(true),
            during(false)
        );
    }
    println!(
        "| uploads acknowledged / then deleted / kept, each searched by its own picture / not indexed or not found | {} / {} / {} / {} |",
        record.uploaded.len(),
        record.deleted.len(),
        acknowledged.len(),
        not_indexed.len() + unfound.len()
    );
    println!("| indexed rows whose vector in Milvus carries another URI or content hash | {} |", disagreeing.len());
    println!(
        "| rows in the catalog (indexed) / vectors in Milvus (count) / vectors found for those rows | {} / {milvus_count} / {vectors} |",
        indexed.len()
    );
    println!(
        "| serve RSS start / at 1/4, 1/2, 3/4 of the run / end / peak | {} / {}, {}, {} / {} / {} |",
        mib(rss.first()),
        mib(rss.get(rss.len() / 4)),
        mib(rss.get(rss.len() / 2)),
        mib(rss.get(rss.len() * 3 / 4)),
        mib(rss.last()),
        mib(rss.iter().max())
    );
    // Each outage must have bitten, or the fault injection did not work: requests must have
    // failed during a Milvus outage (searches need Milvus), and writes (which need the
    // catalog) must have met PostgreSQL's crash: sent before the restart and either refused
    // or answered only after the restart (they waited for it).
    let met = |outage: &Outage| -> Vec<&Outcome> {
        record
            .outcomes
            .iter()
            .filter(|o| o.kind != "search" && o.at.checked_sub(o.took).is_some_and(|sent| sent <= outage.restarted))
            .filter(|o| o.at >= outage.from)
            .filter(|o| o.status >= 300 || o.status == 0 || o.at >= outage.restarted)
            .collect()
    };
    let failed_during = |outage: &Outage| {
        record
            .outcomes
            .iter()
            .filter(|o| {
                o.at >= outage.from && o.at <= outage.recovered.unwrap_or(end) && o.status != 0 && o.status >= 300
            })
            .count()
    };
    for outage in &outages {
        let writes = met(outage);
        println!(
            "| {} at {:.0} s: writes that met it (refused, or answered only after the restart) / the longest of them / refused | {} / {} / {} |",
            outage.what,
            (outage.from - started).as_secs_f64(),
            writes.len(),
            writes.iter().map(|o| o.took).max().map(millis).unwrap_or_default(),
            writes.iter().filter(|o| o.status >= 300 || o.status == 0).count()
        );
    }
    let mut retry_afters: Vec<u64> =
        record.outcomes.iter().filter(|o| o.status == 503).filter_map(|o| o.retry_after).collect();
    retry_afters.sort();
    retry_afters.dedup();
    println!("| `Retry-After` values the 503s carried (the clients waited that long) | {retry_afters:?} |");
    let server_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    // A delete Milvus accepted without removing the vectors, refused (503) and retried.
    let unconfirmed = server_log.matches("accepted a delete").count();
    let redone = server_log.matches("deleting them again").count();
    println!(
        "| deletes Milvus acknowledged but did not apply: sent again by the server / answered 503 | {redone} / {unconfirmed} |"
    );
    println!("| requests outside the policy | {} |\n", bad.len());

    let tail: String =
        server_log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    let examples: Vec<String> = bad
        .iter()
        .take(5)
        .map(|o| format!("{} at {:.1} s: {} {}", o.kind, (o.at - started).as_secs_f64(), o.status, o.detail))
        .collect();
    assert!(
        bad.is_empty(),
        "{} requests failed outside an outage or not as 503 + Retry-After, e.g.\n{}\nserver log:\n{tail}",
        bad.len(),
        examples.join("\n")
    );
    assert!(failed_ingests.is_empty(), "ingests failed outside any outage: {failed_ingests:?}");
    for outage in &outages {
        if outage.what.starts_with("Milvus") {
            assert!(failed_during(outage) > 0, "{}: no request failed, so the fault did not bite", outage.what);
        } else {
            assert!(!met(outage).is_empty(), "{}: no write met it, so the fault did not bite", outage.what);
        }
    }
    for outage in &outages {
        let back = outage.recovered.map(|r| r - outage.restarted);
        assert!(
            back.is_some_and(|b| b <= RECOVERY_LIMIT),
            "{} : service not back within {RECOVERY_LIMIT:?} ({back:?})\n{tail}",
            outage.what
        );
    }
    assert!(
        record.uploaded.len() >= 20 && count("search", true) >= 100,
        "the load ran: {} uploads",
        record.uploaded.len()
    );
    assert!(
        disagreeing.is_empty(),
        "Milvus and the catalog disagree on {} rows, e.g. {:?}",
        disagreeing.len(),
        &disagreeing[..disagreeing.len().min(5)]
    );
    assert!(kept_deleted.is_empty(), "acknowledged deletes still catalogued: {kept_deleted:?}");
    // What a missing image met: its row's times, its upload attempts and the outages.
    let wall_start_ms = wall_start.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let since = |at: Instant| format!("{:.1} s", (at - started).as_secs_f64());
    let history = |ids: &[i64]| -> String {
        let mut lines = Vec::new();
        for id in ids {
            let row = rows.get(id);
            let ms = |t: Option<i64>| {
                t.map(|t| format!("{:.1} s", (t - wall_start_ms) as f64 / 1000.0)).unwrap_or("-".into())
            };
            lines.push(format!(
                "id {id}: row {:?} created {} updated {}",
                row.map(|r| r.status),
                ms(row.and_then(|r| r.created_at_ms)),
                ms(row.and_then(|r| r.updated_at_ms))
            ));
            if let Some(picture) = record.uploaded.get(id) {
                let print = fingerprint(picture);
                for (sent, answered, status, acked, _) in record.upload_attempts.iter().filter(|a| a.4 == print) {
                    lines.push(format!(
                        "  upload sent {} answered {} status {status} id {acked:?}",
                        since(*sent),
                        since(*answered)
                    ));
                }
            }
            for (sent, answered, status, _) in record.delete_attempts.iter().filter(|a| a.3 == *id) {
                lines.push(format!("  delete sent {} answered {} status {status}", since(*sent), since(*answered)));
            }
        }
        for outage in &outages {
            lines.push(format!("{} from {} restarted {}", outage.what, since(outage.from), since(outage.restarted)));
        }
        lines.join("\n")
    };
    assert!(
        deleted_vectors.is_empty(),
        "acknowledged deletes still have vectors: {deleted_vectors:?}\n{}",
        history(&deleted_vectors)
    );
    let without_vector_ids: Vec<i64> =
        indexed.iter().filter(|id| without_vector.contains(&rows[id].uri)).copied().collect();
    assert!(
        not_indexed.is_empty(),
        "acknowledged uploads not indexed at the end: {not_indexed:?}\n{}",
        history(&not_indexed)
    );
    assert!(
        unfound.is_empty(),
        "acknowledged uploads not found by their own picture: {unfound:?}\n{}",
        history(&unfound)
    );
    assert!(
        without_vector.is_empty(),
        "indexed rows without a vector: {without_vector:?}\n{}",
        history(&without_vector_ids)
    );
    assert_eq!(vectors, indexed.len(), "every indexed row has its vector; these have none: {without_vector:?}");
    assert_eq!(milvus_count as usize, indexed.len(), "Milvus holds exactly one vector per indexed row");
    assert_eq!(folder_rows, folder_uris, "the folder's rows are exactly its files");
    drop(milvus);
}
