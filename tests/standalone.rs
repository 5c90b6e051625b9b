//! The `standalone` command as a user runs it: the real binary starts Milvus Lite, ingests a
//! folder, serves search, and on Ctrl-C (SIGINT) stops everything it started. And `serve` as
//! Kubernetes stops it: SIGTERM mid-request.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// A running `imgsearch standalone`, its log read on a thread (so a silent process cannot
/// block the test).
struct Standalone {
    child: std::process::Child,
    log_lines: std::sync::mpsc::Receiver<String>,
    /// Its log up to "is serving on".
    log: String,
    port: u16,
}

impl Standalone {
    /// Starts it on `images` with `data` as its data directory and waits, at most two minutes,
    /// until it serves.
    fn start(images: &std::path::Path, data: &std::path::Path) -> Self {
        let port = common::free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_imgsearch"))
            .args(["standalone", "--images"])
            .arg(images)
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("RUST_LOG", "info")
            // A pipe, not a terminal: the structured (JSON) log a pod would write.
            .env("IMGSEARCH_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start imgsearch standalone");
        let stderr = child.stderr.take().unwrap();
        let (to_test, log_lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if to_test.send(line).is_err() {
                    break;
                }
            }
        });
        let mut log = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Ok(line) = log_lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            let serving = line.contains("is serving on");
            log.push(line);
            if serving {
                break;
            }
        }
        let log = log.join("\n");
        assert!(log.contains("is serving on"), "standalone did not start serving:\n{log}");
        Self { child, log_lines, log, port }
    }

    /// The Milvus Lite pid it reports.
    fn milvus_lite_pid(&self) -> i32 {
        self.log
            .lines()
            .find(|l| l.contains("Milvus Lite is listening"))
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .and_then(|entry| entry["fields"]["pid"].as_i64())
            .and_then(|pid| i32::try_from(pid).ok())
            .unwrap_or_else(|| panic!("no Milvus Lite pid in the JSON log:\n{}", self.log))
    }

    /// Ctrl-C; waits (30 s at most) for it to exit cleanly and returns the rest of its log.
    fn stop(mut self) -> String {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGINT)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "imgsearch did not exit within 30 s of Ctrl-C");
            std::thread::sleep(Duration::from_millis(100));
        };
        // The rest of its log, until the pipe closes (bounded: a leftover child holding the
        // pipe must not hang the test; the assertions then say what is missing).
        let mut rest = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(line) = self.log_lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            rest.push(line);
        }
        let rest = rest.join("\n");
        assert!(status.success(), "exit status {status}:\n{rest}");
        rest
    }
}

#[test]
fn standalone_ingests_serves_and_stops_milvus_lite_on_ctrl_c_and_a_second_run_keeps_the_data() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    let data = work.path().join("data");
    std::fs::create_dir_all(&images).unwrap();
    common::copy_photos(&["astronaut.jpg", "coffee.jpg"], &images);
    let first = Standalone::start(&images, &data);
    assert!(first.log.contains("2 indexed"), "the folder was not ingested:\n{}", first.log);
    let lite_pid = first.milvus_lite_pid();
    let count = http_get(first.port, "/v1/count");
    assert!(count.starts_with("HTTP/1.1 200") && count.contains("\"count\":2"), "{count}");
    // An upload: not in the folder, so only the data directory keeps it.
    let upload = http_upload(first.port, "/v1/images", &std::fs::read(common::photo("rocket.jpg")).unwrap());
    assert!(upload.starts_with("HTTP/1.1 201"), "{upload}");

    let rest = first.stop();
    assert!(rest.contains("Milvus Lite stopped"), "{rest}");
    let lite_alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(lite_pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{lite_pid}/stat")).unwrap_or_default().contains(") Z ");
    assert!(!lite_alive, "Milvus Lite (pid {lite_pid}) outlived imgsearch");

    // The second run on the same data directory: the folder is unchanged (nothing embedded
    // again), the upload is still there, and a search finds it.
    let second = Standalone::start(&images, &data);
    assert!(second.log.contains("0 indexed, 2 unchanged"), "the second run re-embedded the folder:\n{}", second.log);
    let count = http_get(second.port, "/v1/count");
    assert!(count.contains("\"count\":3"), "the second run lost data: {count}");
    let found = http_upload(second.port, "/v1/search?top_k=1", &std::fs::read(common::photo("rocket.jpg")).unwrap());
    assert!(found.starts_with("HTTP/1.1 200") && found.contains("\"score\":"), "{found}");
    let listing = http_get(second.port, "/v1/images?limit=10");
    assert!(listing.contains("astronaut.jpg") && listing.contains("coffee.jpg"), "{listing}");
    second.stop();
}

/// POSTs `bytes` as the `image` field of a multipart form; the raw answer.
fn http_upload(port: u16, path: &str, bytes: &[u8]) -> String {
    let boundary = "imgsearch-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    std::io::Write::write_all(&mut stream, head.as_bytes()).unwrap();
    std::io::Write::write_all(&mut stream, &body).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).expect("an answer within 60 s");
    answer
}

/// Kubernetes sends SIGTERM and waits: the server keeps answering for its drain time with
/// readiness failing (so the Service stops routing to it), then stops accepting, finishes the
/// upload it is receiving (the client gets its answer, the image is stored) and exits 0.
#[test]
fn serve_on_sigterm_stops_accepting_finishes_the_request_in_flight_and_exits_cleanly() {
    use std::io::{Read, Write};
    let work = tempfile::tempdir().unwrap();
    let uploads = work.path().join("uploads");
    let port = common::free_port();
    let mut child = serve_command(work.path(), &common::milvus_uri(), "sigterm", port)
        .env("IMGSEARCH_SHUTDOWN_DRAIN_SECONDS", "3")
        .env("IMGSEARCH_LOG_FORMAT", "json")
        .spawn()
        .expect("start imgsearch serve");
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());
    wait_ready(&mut child, port, Duration::from_secs(60));

    // An upload whose body is only half sent when the signal arrives.
    let photo = std::fs::read(common::photo("coffee.jpg")).unwrap();
    let boundary = "sigterm-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"c.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&photo);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        stream,
        "POST /v1/images HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    stream.write_all(first).unwrap();
    stream.flush().unwrap();

    assert!(http_get(port, "/readyz").starts_with("HTTP/1.1 200"), "ready before the signal");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    // Draining (3 s): still answering, but not ready. Each step waits for what it needs, with a
    // deadline, instead of assuming where the clock is.
    let deadline = Instant::now() + Duration::from_secs(3);
    let readiness = loop {
        let readiness = http_get(port, "/readyz");
        if readiness.starts_with("HTTP/1.1 503") || Instant::now() > deadline {
            break readiness;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(readiness.starts_with("HTTP/1.1 503") && readiness.contains("shutting down"), "{readiness}");
    assert!(http_get(port, "/healthz").starts_with("HTTP/1.1 200"), "still alive while draining");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "still accepting new connections 30 s after the signal");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(child.try_wait().unwrap().is_none(), "exited with a request in flight");

    stream.write_all(rest).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("the answer to the request in flight");
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 1, "the upload was stored");

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not exit within 30 s of finishing its last request");
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = common::join_within(log, Duration::from_secs(10), "reading the log of the exited server").join("\n");
    assert!(status.success(), "exit status {status}:\n{log}");
    assert!(log.contains("search API stopped"), "{log}");
}

/// A plain HTTP/1.1 GET over loopback, returning the whole response.
/// `imgsearch serve` on `port` over the Milvus at `milvus_uri`, with a SQLite catalog and an
/// upload folder in `work`, a collection of its own for `purpose`, an info log on a pipe.
fn serve_command(work: &std::path::Path, milvus_uri: &str, purpose: &str, port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_imgsearch"));
    command
        .arg("serve")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("MILVUS_URI", milvus_uri)
        .env("DATABASE_URL", format!("sqlite://{}", work.join("catalog.db").display()))
        .env("IMGSEARCH_COLLECTION", common::unique_collection(purpose))
        .env("IMGSEARCH_UPLOAD_DIR", work.join("uploads"))
        .env("IMGSEARCH_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Waits until `serve` (child) on `port` answers `/readyz` with 200: it listens at once, and is
/// ready once its model is loaded and Milvus and the catalog answer.
fn wait_ready(child: &mut std::process::Child, port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    loop {
        if let Some(answer) = try_get(port, "/readyz") {
            if answer.starts_with("HTTP/1.1 200") {
                return;
            }
            last = answer;
        }
        assert!(child.try_wait().unwrap().is_none(), "serve exited before it was ready; its last /readyz: {last}");
        assert!(Instant::now() < deadline, "serve not ready within {within:?}; its last /readyz: {last}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET path`, or `None` when nothing listens yet.
fn try_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the search API");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    response
}

/// Sends `request` (a whole HTTP/1.1 request) and returns the whole answer.
fn http_raw(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the search API");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    response
}

/// `--auth-token-file`: the token is read from the file (its trailing newline, as `echo` and
/// Secret volumes leave it, ignored) and write routes need it; a file that cannot be read stops
/// the server at start with a message naming it.
#[test]
fn serve_reads_its_token_from_a_file_and_refuses_writes_without_it() {
    let work = tempfile::tempdir().unwrap();
    let token_file = work.path().join("token");
    std::fs::write(&token_file, "file-token\n").unwrap();
    let port = common::free_port();
    let serve = |token_file: &std::path::Path| {
        serve_command(work.path(), &common::milvus_uri(), "tokenfile", port)
            .arg("--auth-token-file")
            .arg(token_file)
            .spawn()
            .expect("start imgsearch serve")
    };

    let mut missing = serve(&work.path().join("no-such-file"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = missing.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve with a missing token file did not stop within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut said = String::new();
    std::io::Read::read_to_string(&mut missing.stderr.take().unwrap(), &mut said).unwrap();
    assert!(!status.success() && said.contains("cannot read the auth token file"), "{status}: {said}");

    let mut child = serve(&token_file);
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).count());
    wait_ready(&mut child, port, Duration::from_secs(60));
    let delete = |token: Option<&str>| {
        let authorization = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        http_raw(
            port,
            &format!("DELETE /v1/images/12345 HTTP/1.1\r\nHost: localhost\r\n{authorization}Connection: close\r\n\r\n"),
        )
    };
    assert!(delete(None).starts_with("HTTP/1.1 401"), "{}", delete(None));
    assert!(delete(Some("wrong")).starts_with("HTTP/1.1 401"));
    let allowed = delete(Some("file-token"));
    assert!(allowed.starts_with("HTTP/1.1 404"), "past the token check, the route's own answer: {allowed}");
    assert!(http_get(port, "/healthz").starts_with("HTTP/1.1 200"));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Milvus not answering when `serve` starts (still starting itself, or the network not there
/// yet): the server listens at once and lives (`/healthz` 200, so the kubelet's probes do not
/// kill it), is not ready (`/readyz` and every other route 503 with `Retry-After`, saying it is
/// starting), keeps trying with backoff, and serves once Milvus answers: the same process, no
/// crash and no restart.
#[test]
fn serve_starts_unready_while_milvus_does_not_answer_and_serves_once_it_does() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime for the forwarder");
    let milvus = runtime
        .block_on(common::outage::Outage::forward_to(common::milvus_uri().trim_start_matches("http://").to_string()));
    milvus.cut();
    let work = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut child = serve_command(work.path(), &milvus.uri(), "unready", port).spawn().expect("start imgsearch serve");
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());

    // Alive, not ready, and retrying: the second attempt is announced, the process still runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    let unready = loop {
        assert!(child.try_wait().unwrap().is_none(), "serve exited while Milvus did not answer");
        if let Some(answer) = try_get(port, "/readyz")
            && answer.contains("attempt 2;")
        {
            break answer;
        }
        assert!(Instant::now() < deadline, "no second attempt to reach Milvus within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(unready.starts_with("HTTP/1.1 503"), "{unready}");
    assert!(unready.contains("the server is starting: Milvus or the catalog does not answer yet"), "{unready}");
    assert!(unready.to_ascii_lowercase().contains("retry-after: 5"), "{unready}");
    assert!(!unready.contains(&milvus.address.to_string()), "no address in a public answer: {unready}");
    assert!(http_get(port, "/healthz").starts_with("HTTP/1.1 200"), "alive while starting");
    // Every other route too (a GET: an upload's body would be left unread by the answer).
    let listing = http_get(port, "/v1/images");
    assert!(listing.starts_with("HTTP/1.1 503") && listing.contains("the server is starting"), "{listing}");

    // Milvus answers: ready within the backoff (at most 30 s between attempts), same process.
    milvus.restore();
    wait_ready(&mut child, port, Duration::from_secs(90));
    let photo = std::fs::read(common::photo("coffee.jpg")).unwrap();
    let upload = http_upload(port, "/v1/images", &photo);
    assert!(upload.starts_with("HTTP/1.1 201"), "{upload}");
    let search = http_upload(port, "/v1/search", &photo);
    assert!(search.starts_with("HTTP/1.1 200") && search.contains("\"score\""), "{search}");
    child.kill().unwrap();
    child.wait().unwrap();
    let log = common::join_within(log, Duration::from_secs(10), "reading the log of the killed server").join("\n");
    assert!(log.contains("not ready: cannot open the index yet") && log.contains(&milvus.uri()), "{log}");
    assert!(log.contains("Milvus and the catalog answer"), "{log}");
}
