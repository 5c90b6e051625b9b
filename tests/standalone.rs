//! The `standalone` command as a user runs it: the real binary starts Milvus Lite, ingests a
//! folder, serves search, and on Ctrl-C (SIGINT) stops everything it started. And `serve` as
//! Kubernetes stops it: SIGTERM mid-request.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

#[test]
fn standalone_ingests_serves_and_stops_milvus_lite_on_ctrl_c() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for name in ["astronaut.jpg", "coffee.jpg"] {
        std::fs::copy(common::photo(name), images.join(name)).unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_imgsearch"))
        .args(["standalone", "--images"])
        .arg(&images)
        .arg("--data-dir")
        .arg(work.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "info")
        // A pipe, not a terminal: the structured (JSON) log a pod would write.
        .env("IMGSEARCH_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start imgsearch standalone");

    // Read its log (on a thread, so a silent process cannot block the test) until it says it
    // serves, for at most two minutes; remember the Milvus Lite pid it reports.
    let stderr = child.stderr.take().unwrap();
    let (to_test, log_lines) = std::sync::mpsc::channel::<String>();
    let drain = std::thread::spawn(move || {
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
    let text = log.join("\n");
    assert!(text.contains("is serving on"), "standalone did not start serving:\n{text}");
    assert!(text.contains("2 indexed"), "the folder was not ingested:\n{text}");
    let lite_pid: i32 = text
        .lines()
        .find(|l| l.contains("Milvus Lite is listening"))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|entry| entry["fields"]["pid"].as_i64())
        .and_then(|pid| i32::try_from(pid).ok())
        .unwrap_or_else(|| panic!("no Milvus Lite pid in the JSON log:\n{text}"));

    let count = http_get(port, "/v1/count");
    assert!(count.starts_with("HTTP/1.1 200") && count.contains("\"count\":2"), "{count}");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "imgsearch did not exit within 30 s of Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    };
    // The rest of its log, until the pipe closes (bounded: a leftover child holding the pipe
    // must not hang the test; the assertions below then say what is missing).
    let mut rest = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(line) = log_lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        rest.push(line);
    }
    drop(drain); // detached: it ends with the pipe
    let rest = rest.join("\n");
    assert!(status.success(), "exit status {status}:\n{rest}");
    assert!(rest.contains("Milvus Lite stopped"), "{rest}");
    let lite_alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(lite_pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{lite_pid}/stat")).unwrap_or_default().contains(") Z ");
    assert!(!lite_alive, "Milvus Lite (pid {lite_pid}) outlived imgsearch");
}

/// Kubernetes sends SIGTERM and waits: the server keeps answering for its drain time with
/// readiness failing (so the Service stops routing to it), then stops accepting, finishes the
/// upload it is receiving (the client gets its answer, the image is stored) and exits 0.
#[test]
fn serve_on_sigterm_stops_accepting_finishes_the_request_in_flight_and_exits_cleanly() {
    use std::io::{Read, Write};
    let work = tempfile::tempdir().unwrap();
    let uploads = work.path().join("uploads");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_imgsearch"))
        .arg("serve")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("MILVUS_URI", common::milvus_uri())
        .env("DATABASE_URL", format!("sqlite://{}", work.path().join("catalog.db").display()))
        .env("IMGSEARCH_COLLECTION", common::unique_collection("sigterm"))
        .env("IMGSEARCH_UPLOAD_DIR", &uploads)
        .env("IMGSEARCH_LISTEN", format!("127.0.0.1:{port}"))
        .env("IMGSEARCH_SHUTDOWN_DRAIN_SECONDS", "3")
        .env("RUST_LOG", "info")
        .env("IMGSEARCH_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start imgsearch serve");
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "serve exited before listening");
        assert!(Instant::now() < deadline, "serve did not listen within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }

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
    let log = log.join().unwrap().join("\n");
    assert!(status.success(), "exit status {status}:\n{log}");
    assert!(log.contains("search API stopped"), "{log}");
}

/// A plain HTTP/1.1 GET over loopback, returning the whole response.
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
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let serve = |token_file: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_imgsearch"))
            .arg("serve")
            .arg("--auth-token-file")
            .arg(token_file)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("MILVUS_URI", common::milvus_uri())
            .env("DATABASE_URL", format!("sqlite://{}", work.path().join("catalog.db").display()))
            .env("IMGSEARCH_COLLECTION", common::unique_collection("tokenfile"))
            .env("IMGSEARCH_UPLOAD_DIR", work.path().join("uploads"))
            .env("IMGSEARCH_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
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
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "serve exited before listening");
        assert!(Instant::now() < deadline, "serve did not listen within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
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
