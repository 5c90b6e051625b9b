//! A real S3-compatible server for the bucket-source tests: moto in server mode, from the
//! project's .venv (scripts/setup.sh installs it). One per test that needs it; it starts in
//! about a second. Fixtures are written with plain unsigned HTTP PUTs (moto accepts them), so
//! the code under test is not also the code that set the test up.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct MotoServer {
    pub endpoint: String,
    child: Child,
}

impl MotoServer {
    pub async fn start() -> Self {
        let port = super::free_port();
        let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({e}): run `make setup`", binary.display()));
        let server = Self { endpoint: format!("http://127.0.0.1:{port}"), child };
        let client = super::http_client();
        for _ in 0..300 {
            if client.get(&server.endpoint).send().await.is_ok() {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("moto_server did not answer on {} within 15 s", server.endpoint);
    }

    pub async fn create_bucket(&self, bucket: &str) {
        let response =
            super::http_client().put(format!("{}/{bucket}", self.endpoint)).send().await.expect("PUT bucket");
        assert!(response.status().is_success(), "creating bucket {bucket}: {}", response.status());
    }

    /// Stores an object; `key` is sent percent-encoded, as S3 clients do.
    pub async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) {
        let encoded: Vec<String> = key.split('/').map(percent_encode).collect();
        let url = format!("{}/{bucket}/{}", self.endpoint, encoded.join("/"));
        let response = super::http_client().put(&url).body(body).send().await.expect("PUT object");
        assert!(response.status().is_success(), "storing {key}: {}", response.status());
    }

    /// Replaces an object that exists. moto refuses unsigned overwrites and DELETEs, so these
    /// go through object_store (signed requests), as a bucket owner's tool would.
    pub async fn overwrite(&self, bucket: &str, key: &str, body: Vec<u8>) {
        use object_store::ObjectStoreExt;
        let path = object_store::path::Path::parse(key).expect("a valid key");
        let store = self.signed_client(bucket);
        store.put(&path, body.into()).await.unwrap_or_else(|e| panic!("replacing {key}: {e}"));
    }

    pub async fn delete(&self, bucket: &str, key: &str) {
        use object_store::ObjectStoreExt;
        let path = object_store::path::Path::parse(key).expect("a valid key");
        let store = self.signed_client(bucket);
        store.delete(&path).await.unwrap_or_else(|e| panic!("deleting {key}: {e}"));
    }

    fn signed_client(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .build()
            .expect("an S3 client for the test server")
    }
}

fn percent_encode(part: &str) -> String {
    part.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
