//! The container image, as far as it can be tested without a Docker engine: the runtime file
//! tree of the Dockerfile's final stage is assembled from its COPY lines (the binary, the model,
//! ONNX Runtime's library from the same wheel), and the binary runs from that tree with only
//! the Dockerfile's ENV (absolute paths re-rooted into the tree) plus what the pods set: it
//! prints its version, ingests photos into Milvus Lite and answers a search.
//!
//! What this does not cover: that the base images exist and build (`docker build` is not run
//! here), and the real filesystem isolation of a container (paths are re-rooted instead).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use imgsearch::controller::children::{self, ChildConfig};
use imgsearch::crd::ImageCollection;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What the final stage of the Dockerfile says.
#[derive(Debug, Default)]
struct RuntimeStage {
    base: String,
    /// (source stage, path in that stage, destination in the image)
    copies: Vec<(String, String, String)>,
    env: BTreeMap<String, String>,
    user: String,
    entrypoint: Vec<String>,
}

fn runtime_stage() -> RuntimeStage {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let mut stage = RuntimeStage::default();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (instruction, rest) = line.split_once(' ').unwrap_or((line, ""));
        match instruction {
            // Each FROM starts a stage; only the last one is the image.
            "FROM" => stage = RuntimeStage { base: rest.to_string(), ..RuntimeStage::default() },
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                if let [from, source, destination] = words.as_slice()
                    && let Some(from) = from.strip_prefix("--from=")
                {
                    stage.copies.push((from.to_string(), source.to_string(), destination.to_string()));
                }
            }
            "ENV" => {
                let (name, value) = rest.split_once('=').expect("ENV NAME=value");
                stage.env.insert(name.to_string(), value.to_string());
            }
            "USER" => stage.user = rest.to_string(),
            "ENTRYPOINT" => stage.entrypoint = serde_json::from_str(rest).expect("ENTRYPOINT in exec form"),
            _ => {}
        }
    }
    stage
}

/// The local file that stands for `path` of a build stage.
fn local_source(stage: &str, path: &str) -> PathBuf {
    match (stage, path) {
        ("build", "/src/target/release/imgsearch") => PathBuf::from(env!("CARGO_BIN_EXE_imgsearch")),
        ("build", checkout) if checkout.starts_with("/src/") => root().join(&checkout["/src/".len()..]),
        ("onnxruntime", wheel) if wheel.starts_with("/wheel/") => {
            let site_packages = std::fs::read_dir(root().join(".venv/lib"))
                .expect(".venv/lib: run `make test`")
                .map(|e| e.expect("entry").path().join("site-packages"))
                .find(|p| p.is_dir())
                .expect("the venv's site-packages");
            site_packages.join(&wheel["/wheel/".len()..])
        }
        _ => panic!("tests/container_image.rs does not know where COPY --from={stage} {path} comes from; teach it"),
    }
}

/// An absolute image path inside the assembled tree.
fn in_tree(tree: &Path, path: &str) -> PathBuf {
    tree.join(path.trim_start_matches('/'))
}

fn assemble(stage: &RuntimeStage, tree: &Path) {
    for (from, source, destination) in &stage.copies {
        let local = local_source(from, source);
        assert!(local.is_file(), "{} (for {destination}) is missing", local.display());
        let target = in_tree(tree, destination);
        std::fs::create_dir_all(target.parent().expect("a parent folder")).unwrap();
        std::fs::copy(&local, &target).unwrap_or_else(|e| panic!("{} → {}: {e}", local.display(), target.display()));
    }
}

/// The shared libraries an ELF file needs, from `readelf -d`.
fn needed_libraries(file: &Path) -> Vec<String> {
    let output = std::process::Command::new("readelf").arg("-d").arg(file).output().expect("readelf (binutils)");
    assert!(output.status.success(), "readelf {}", file.display());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split_once('[')?.1.trim_end_matches(']').to_string()))
        .collect()
}

/// A pod's environment from the generated Deployment of a sample collection: the plain values.
fn search_pod_env() -> BTreeMap<String, String> {
    let sample = std::fs::read_to_string(root().join("manifests/samples/s3.yaml")).unwrap();
    let document = serde_yaml::Deserializer::from_str(&sample).next().expect("first document");
    let mut ic: ImageCollection = serde::Deserialize::deserialize(document).expect("an ImageCollection");
    ic.metadata.uid = Some("uid".into());
    let config = ChildConfig::test();
    let deployment = children::search_deployment(&ic, &config).expect("builds");
    let pod = deployment.spec.template.spec.expect("pod spec");
    let container = &pod.containers[0];
    // The pods name no user: the image's numeric USER is what `runAsNonRoot` is checked
    // against, and a platform assigning its own IDs (OpenShift) may replace it.
    let security = pod.security_context.as_ref();
    assert_eq!(security.and_then(|s| s.run_as_non_root), Some(true));
    assert_eq!(
        security.and_then(|s| s.run_as_user),
        None,
        "pods that pin a UID are refused by OpenShift's restricted SCC"
    );
    let user = runtime_stage().user;
    assert!(
        user.split(':').all(|id| id.parse::<u32>().is_ok_and(|id| id != 0)),
        "runAsNonRoot needs a numeric non-root USER, not {user}"
    );
    container.env.iter().flatten().filter_map(|e| Some((e.name.clone(), e.value.clone()?))).collect()
}

#[test]
fn the_runtime_stage_carries_what_the_binary_needs_and_nothing_the_base_lacks() {
    let stage = runtime_stage();
    assert!(stage.base.starts_with("gcr.io/distroless/cc-debian12:nonroot"), "{}", stage.base);
    assert_eq!(stage.user, "65532:65532", "non-root, and the user the manifests run as");
    let destinations: Vec<&str> = stage.copies.iter().map(|(_, _, d)| d.as_str()).collect();
    for wanted in [&stage.entrypoint[0], &stage.env["ORT_DYLIB_PATH"]] {
        assert!(destinations.contains(&wanted.as_str()), "{wanted} is not copied into the image");
    }
    let model_dir = &stage.env["IMGSEARCH_MODEL_DIR"];
    assert!(
        destinations.iter().any(|d| d.strip_prefix(model_dir.as_str()) == Some("/efficientnet-lite0.onnx")),
        "the model is not in {model_dir}"
    );
    // The pods the controller creates point at the same model folder.
    assert_eq!(search_pod_env().get("IMGSEARCH_MODEL_DIR"), Some(model_dir));
    // distroless/cc has glibc, libgcc and libstdc++, nothing more: a new native dependency
    // (OpenSSL, libjpeg, ...) would fail at start in the image, so it fails here first.
    let base_libraries = [
        "libc.so.6",
        "libm.so.6",
        "libdl.so.2",
        "librt.so.1",
        "libpthread.so.0",
        "ld-linux-x86-64.so.2",
        "libgcc_s.so.1",
        "libstdc++.so.6",
    ];
    for (from, source, destination) in &stage.copies {
        if destination.ends_with(".onnx") || destination.ends_with("LICENSE") {
            continue;
        }
        for library in needed_libraries(&local_source(from, source)) {
            assert!(base_libraries.contains(&library.as_str()), "{destination} needs {library}, which the base lacks");
        }
    }
}

#[tokio::test]
async fn the_binary_runs_from_the_image_tree_ingests_and_answers_a_search() {
    let stage = runtime_stage();
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("image");
    assemble(&stage, &tree);
    // Only the image's ENV (re-rooted) and what a pod adds; nothing from this machine's shell.
    let mut env: BTreeMap<String, String> = stage
        .env
        .iter()
        .map(|(k, v)| (k.clone(), if v.starts_with('/') { in_tree(&tree, v).display().to_string() } else { v.clone() }))
        .collect();
    env.insert("RUST_LOG".into(), "info".into());
    let binary = in_tree(&tree, &stage.entrypoint[0]);
    let command = |args: &[&str], extra: &[(&str, String)]| {
        let mut command = tokio::process::Command::new(&binary);
        command.args(args).env_clear().envs(&env).current_dir(work.path()).kill_on_drop(true);
        for (name, value) in extra {
            command.env(name, value);
        }
        command
    };

    let version = common::output_within(&mut command(&["--version"], &[]), Duration::from_secs(30), "--version").await;
    assert!(version.status.success(), "{}", String::from_utf8_lossy(&version.stderr));
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("imgsearch {}", env!("CARGO_PKG_VERSION")));

    let photos = work.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    common::copy_photos(&["astronaut.jpg", "coffee.jpg", "rocket.jpg"], &photos);
    let collection = common::unique_collection("image_tree");
    let backend = [
        ("MILVUS_URI", common::milvus_uri()),
        ("DATABASE_URL", format!("sqlite://{}", work.path().join("catalog.db").display())),
        ("IMGSEARCH_COLLECTION", collection.clone()),
    ];
    let ingest = common::output_within(
        &mut command(&["ingest", "--json", photos.to_str().unwrap()], &backend),
        Duration::from_secs(180),
        "the image tree's ingest of 3 photos",
    )
    .await;
    let log = String::from_utf8_lossy(&ingest.stderr);
    assert!(ingest.status.success(), "ingest from the image tree failed:\n{log}");
    let summary: serde_json::Value = serde_json::from_slice(&ingest.stdout).expect("JSON summary");
    assert_eq!(summary["indexed"], 3, "{summary}");

    let port = common::free_port();
    let mut serve = command(&["serve"], &[&backend[..], &[("IMGSEARCH_LISTEN", format!("127.0.0.1:{port}"))]].concat())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    let client = common::http_client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // It listens at once and is ready once the model is loaded and Milvus answers.
    while !client.get(format!("http://127.0.0.1:{port}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(tokio::time::Instant::now() < deadline, "serve from the image tree did not come up");
        assert!(serve.try_wait().unwrap().is_none(), "serve exited early");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(std::fs::read(common::photo("rocket.jpg")).unwrap()).file_name("q.jpg"),
        )
        .text("top_k", "2");
    let response: serde_json::Value = client
        .post(format!("http://127.0.0.1:{port}/v1/search"))
        .multipart(form)
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("JSON");
    let top = response["results"][0]["uri"].as_str().unwrap_or_default();
    assert!(top.ends_with("/rocket.jpg"), "{response}");
    serve.kill().await.ok();
}
