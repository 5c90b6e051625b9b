//! The server's connection limits: stalled clients and the connection cap.

use super::*;

/// Slow clients (slowloris): connections that send part of their headers and then nothing are
/// closed after the header timeout; a body that stops arriving is answered 408 and the
/// connection closed; meanwhile, and afterwards, normal requests are served. A slow upload that
/// keeps moving is kept: its body takes three times the idle limit, every gap shorter than it.
#[tokio::test]
async fn stalled_connections_are_closed_while_normal_requests_are_served() {
    use tokio::io::AsyncWriteExt;
    let limits = imgsearch::api::server::ConnectionLimits {
        header_timeout: Duration::from_secs(1),
        body_idle_timeout: Duration::from_secs(1),
        max_connections: 64,
    };
    let f = fixture_with(&[], |config| config.connection_limits = limits).await;
    let address = serve(&f).await;
    let mut stalled_headers = Vec::new();
    for _ in 0..20 {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Ty").await.unwrap();
        stalled_headers.push(stream);
    }
    let mut stalled_body = tokio::net::TcpStream::connect(address).await.unwrap();
    stalled_body
        .write_all(b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n\xff\xd8")
        .await
        .unwrap();
    // Served while those connections are held.
    let health = common::http_client().get(format!("http://{address}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);

    let answer = read_until_closed(&mut stalled_body, Duration::from_secs(10), "a connection whose body stalled").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("request_timeout") && answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    for mut stream in stalled_headers {
        let answer =
            read_until_closed(&mut stream, Duration::from_secs(10), "a connection whose headers stalled").await;
        // Closed without an answer: hyper's header timeout ends the connection without writing
        // (hyper 1.x, proto/h1/conn.rs: `new_header_timeout` is returned, not answered).
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    }
    let health = common::http_client().get(format!("http://{address}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK, "still serving after the stalled ones went");

    let photo = photo_bytes("rocket.jpg");
    let mut body = b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"slow.jpg\"\r\n\r\n".to_vec();
    body.extend_from_slice(&photo);
    body.extend_from_slice(b"\r\n--b--\r\n");
    let mut slow = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let pieces = 10;
    for piece in body.chunks(body.len().div_ceil(pieces)) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        slow.write_all(piece).await.expect("the server still reads a body that keeps moving");
    }
    let trickled = started.elapsed();
    assert!(trickled >= Duration::from_secs(3), "the body took only {trickled:?}, not three idle limits");
    let answer = read_until_closed(&mut slow, Duration::from_secs(30), "a slow upload that kept moving").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "a body trickled over {trickled:?} was not stored: {answer}");
    assert_eq!(f.stored_uploads().len(), 1, "the slow upload is stored: {:?}", f.stored_uploads());
}

/// Beyond the connection cap a new connection is closed at once, and a slot frees when a held
/// connection goes (here: by the header timeout).
#[tokio::test]
async fn connections_beyond_the_cap_are_closed_until_a_slot_frees() {
    use tokio::io::AsyncWriteExt;
    let limits = imgsearch::api::server::ConnectionLimits {
        header_timeout: Duration::from_secs(2),
        body_idle_timeout: Duration::from_secs(30),
        max_connections: 4,
    };
    let f = fixture_with(&[], |config| config.connection_limits = limits).await;
    let address = serve(&f).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.unwrap();
        held.push(stream);
    }
    // Accepted (the kernel's backlog does that) and closed by the server without an answer.
    let mut over = tokio::net::TcpStream::connect(address).await.unwrap();
    let answer = read_until_closed(&mut over, Duration::from_secs(1), "a connection over the cap").await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    for mut stream in held {
        read_until_closed(&mut stream, Duration::from_secs(10), "a held connection past the header timeout").await;
    }
    let health = common::http_client().get(format!("http://{address}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK, "slots freed once the held connections closed");
}
