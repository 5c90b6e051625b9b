//! Offline validation of everything imgsearch asks a cluster to store: the kustomize manifests,
//! the samples, and the objects the controller generates from the samples.
//!
//! - Built-in kinds are checked strictly (unknown fields are errors) against the Kubernetes
//!   OpenAPI schemas bundled in PyPI `kubernetes-validate`, pinned to [`KUBERNETES`].
//! - ImageCollections are checked against the committed CRD's openAPIV3Schema with PyPI
//!   `check-jsonschema`, made strict the way the API server is (an unknown field is refused:
//!   kubectl's default field validation since 1.27), and against the committed CRD's CEL rules,
//!   evaluated by a real CEL engine with the Kubernetes CEL libraries (kube-cel).
//! - tests/broken-samples/ holds deliberately broken objects, each refused with the message
//!   its first line names.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use imgsearch::controller::children::{self, ChildConfig};
use imgsearch::crd::ImageCollection;
use serde::Deserialize;
use serde_json::{Value, json};

/// The Kubernetes version the schemas come from (kubernetes-validate 1.37.0 bundles it).
const KUBERNETES: &str = "1.37.0";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn venv_tool(name: &str) -> PathBuf {
    let tool = root().join(".venv/bin").join(name);
    assert!(tool.exists(), "{} is missing: run `make test` (scripts/setup.sh installs it)", tool.display());
    tool
}

fn documents(yaml: &str, what: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|document| Value::deserialize(document).unwrap_or_else(|e| panic!("{what}: {e}")))
        .filter(|document| !document.is_null())
        .collect()
}

fn samples() -> Vec<(PathBuf, Value)> {
    common::yaml_files(&root().join("manifests/samples"))
        .into_iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(&path).expect("sample readable");
            documents(&text, &path.display().to_string()).into_iter().map(move |d| (path.clone(), d))
        })
        .collect()
}

fn kind_name(object: &Value) -> String {
    format!("{}/{}", object["kind"].as_str().unwrap_or("?"), object["metadata"]["name"].as_str().unwrap_or("?"))
}

/// Runs kubernetes-validate --strict over `objects` (one file each) and fails with its output
/// unless every object passed.
fn validate_builtin(objects: &[Value]) {
    let work = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = objects
        .iter()
        .enumerate()
        .map(|(i, object)| {
            let path = work.path().join(format!("{i:02}-{}.yaml", kind_name(object).replace('/', "-")));
            std::fs::write(&path, serde_yaml::to_string(object).expect("YAML")).unwrap();
            path
        })
        .collect();
    let output = common::output_within_blocking(
        Command::new(venv_tool("kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", KUBERNETES])
            .args(&files),
        Duration::from_secs(300),
        "kubernetes-validate",
    );
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "kubernetes-validate --strict refused:\n{report}");
    let passed = report.matches(" passed for resource ").count();
    assert_eq!(passed, objects.len(), "every object must be validated, none skipped:\n{report}");
}

/// kustomize re-emits `1.0` as `1`; the same schema either way.
fn same_numbers_as_floats(value: &Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(items) => Value::Array(items.iter().map(same_numbers_as_floats).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), same_numbers_as_floats(v))).collect()),
        other => other.clone(),
    }
}

fn kustomize(folder: &str) -> Vec<Value> {
    let output = common::output_within_blocking(
        Command::new("kubectl").args(["kustomize", folder]).current_dir(root()),
        Duration::from_secs(120),
        &format!("kubectl kustomize {folder} (kubectl renders manifests/; scripts/setup.sh installs it)"),
    );
    assert!(output.status.success(), "kubectl kustomize {folder} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    documents(&String::from_utf8_lossy(&output.stdout), "kubectl kustomize output")
}

/// The controller container's image in a rendered install, and the image it passes to its children.
fn controller_images(rendered: &[Value]) -> (String, String) {
    let deployment = rendered.iter().find(|o| o["kind"] == "Deployment").expect("the controller Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let env_image = container["env"].as_array().unwrap().iter().find(|e| e["name"] == "IMGSEARCH_IMAGE").unwrap();
    (container["image"].as_str().unwrap().to_string(), env_image["value"].as_str().unwrap().to_string())
}

#[test]
fn the_kind_overlay_installs_the_local_image_and_passes_it_on() {
    let rendered = kustomize("manifests/overlays/kind");
    assert_eq!(controller_images(&rendered), ("imgsearch:e2e".to_string(), "imgsearch:e2e".to_string()));
    // The whole environment: a replacement aimed at one variable must not hit another.
    let deployment = rendered.iter().find(|o| o["kind"] == "Deployment").expect("the controller Deployment");
    let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
    let plain: Vec<(String, String)> = env
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
        .collect();
    let expected = [
        ("IMGSEARCH_IMAGE", "imgsearch:e2e"),
        ("IMGSEARCH_CONTROLLER_LISTEN", "0.0.0.0:8080"),
        ("RUST_LOG", "info"),
        ("IMGSEARCH_IMAGE_PULL_POLICY", "Never"),
    ];
    assert_eq!(plain, expected.map(|(k, v)| (k.to_string(), v.to_string())), "{env}");
    validate_builtin(&rendered);
}

#[test]
fn the_kustomize_manifests_render_and_validate_strictly() {
    let rendered = kustomize("manifests");
    let mut kinds: Vec<String> = rendered.iter().map(kind_name).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole/imgsearch-controller",
            "ClusterRoleBinding/imgsearch-controller",
            "CustomResourceDefinition/imagecollections.imgsearch.io",
            "Deployment/imgsearch-controller",
            "Namespace/imgsearch-system",
            "PodDisruptionBudget/imgsearch-controller",
            "Role/imgsearch-controller-leader-election",
            "RoleBinding/imgsearch-controller-leader-election",
            "Service/imgsearch-controller-metrics",
            "ServiceAccount/imgsearch-controller",
        ]
    );
    // The CRD kustomize installs is the committed one, byte for byte in content.
    let crd = rendered.iter().find(|o| o["kind"] == "CustomResourceDefinition").expect("the CRD");
    let committed: Value = serde_yaml::from_str(&imgsearch::crd::crd_yaml().expect("CRD")).expect("CRD YAML");
    assert!(
        same_numbers_as_floats(&crd["spec"]) == same_numbers_as_floats(&committed["spec"]),
        "manifests install a CRD other than crds/"
    );
    // The image the controller gives its Jobs is its own (kustomize copies it over).
    let (image, passed_on) = controller_images(&rendered);
    assert_eq!(image, passed_on);
    assert_eq!(image, "ghcr.io/imgsearch/imgsearch:v0.1.0", "a tagged image, not latest");
    // Every object except cluster-scoped ones lands in the controller's namespace.
    for object in &rendered {
        let cluster_scoped = ["Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"]
            .contains(&object["kind"].as_str().unwrap());
        assert_eq!(
            object["metadata"]["namespace"].as_str(),
            (!cluster_scoped).then_some("imgsearch-system"),
            "{}",
            kind_name(object)
        );
    }
    validate_builtin(&rendered);
}

/// A sample collection as the API server would hand it to the controller.
fn stored(sample: &Value) -> ImageCollection {
    let mut object: ImageCollection = serde_json::from_value(sample.clone())
        .unwrap_or_else(|e| panic!("{} does not parse as an ImageCollection: {e}", kind_name(sample)));
    object.metadata.uid = Some("0b5e6f2a-8f3c-4c1e-9d1a-5b7e2c9f4a10".into());
    object.metadata.generation = Some(1);
    object
}

fn built<T: serde::Serialize>(object: Result<T, children::BuildError>, sample: &Path) -> Value {
    let object = object.unwrap_or_else(|e| panic!("{}: {e}", sample.display()));
    serde_json::to_value(object).expect("JSON")
}

#[test]
fn the_samples_and_every_object_the_controller_makes_from_them_validate_strictly() {
    let config = ChildConfig { image: "ghcr.io/imgsearch/imgsearch:v0.1.0".into(), image_pull_policy: None };
    let mut builtin = Vec::new();
    let mut collections = 0;
    for (path, sample) in samples() {
        match sample["apiVersion"].as_str().unwrap_or_default() {
            "imgsearch.io/v1alpha1" => {
                collections += 1;
                let ic = stored(&sample);
                builtin.push(built(children::ingest_job(&ic, &config), &path));
                builtin.push(built(children::search_deployment(&ic, &config), &path));
                builtin.push(built(children::search_service(&ic), &path));
                if let Some(cronjob) = children::rescan_cronjob(&ic, &config).expect("CronJob builds") {
                    builtin.push(serde_json::to_value(cronjob).expect("JSON"));
                }
            }
            "milvus.io/v1beta1" => {} // milvus-operator's kind: its schema is not ours to check
            _ => builtin.push(sample),
        }
    }
    assert_eq!(collections, 3, "a PVC, an S3 and a URL-list sample");
    assert!(builtin.iter().any(|o| o["kind"] == "CronJob"), "the scheduled sample makes a CronJob");
    validate_builtin(&builtin);
}

/// The CRD's openAPIV3Schema as a JSON Schema that refuses unknown fields, as the API server
/// does: every object schema that lists its properties gets `additionalProperties: false`
/// unless it preserves unknown fields. `metadata` is left to the API server (ObjectMeta).
fn strict_crd_schema() -> Value {
    fn tighten(schema: &mut Value) {
        let Some(map) = schema.as_object_mut() else { return };
        let preserves = map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
        if map.contains_key("properties") && !map.contains_key("additionalProperties") && !preserves {
            map.insert("additionalProperties".into(), json!(false));
        }
        for key in ["properties", "items", "additionalProperties"] {
            match map.get_mut(key) {
                Some(Value::Object(children)) if key == "properties" => children.values_mut().for_each(tighten),
                Some(child) if child.is_object() => tighten(child),
                _ => {}
            }
        }
    }
    let crd: Value = serde_yaml::from_str(&imgsearch::crd::crd_yaml().expect("CRD")).expect("CRD YAML");
    let mut schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    tighten(&mut schema);
    schema["properties"]["apiVersion"] = json!({ "const": "imgsearch.io/v1alpha1" });
    schema["properties"]["kind"] = json!({ "const": "ImageCollection" });
    schema["properties"]["metadata"] = json!({ "type": "object" });
    schema["required"] = json!(["apiVersion", "kind", "metadata", "spec"]);
    schema["$schema"] = json!("http://json-schema.org/draft-07/schema#");
    schema
}

/// check-jsonschema's verdict on one object: None if valid, else its report.
fn schema_errors(schema: &Path, object: &Value, work: &Path) -> Option<String> {
    let instance = work.join(format!("{}.json", kind_name(object).replace('/', "-")));
    std::fs::write(&instance, serde_json::to_string_pretty(object).expect("JSON")).unwrap();
    let output = common::output_within_blocking(
        Command::new(venv_tool("check-jsonschema")).arg("--schemafile").arg(schema).arg(&instance),
        Duration::from_secs(120),
        "check-jsonschema",
    );
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (!output.status.success()).then_some(report)
}

fn write_schema(work: &Path) -> PathBuf {
    let path = work.join("imagecollection.schema.json");
    std::fs::write(&path, serde_json::to_string_pretty(&strict_crd_schema()).expect("JSON")).unwrap();
    path
}

/// The messages of the committed CRD's CEL rules that `object` breaks, from a real CEL engine
/// (kube-cel, with the Kubernetes CEL libraries): the check a user without a cluster can run.
fn cel_problems(object: &Value, old: Option<&Value>) -> Vec<String> {
    static SCHEMA: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let schema = SCHEMA.get_or_init(|| {
        let crd: Value = serde_yaml::from_str(include_str!("../crds/imagecollections.imgsearch.io.yaml"))
            .expect("the committed CRD is YAML");
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
    });
    match kube_cel::Validator::new().validate(schema, object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn every_sample_collection_is_valid_against_the_crd_schema_and_its_cel_rules() {
    let work = tempfile::tempdir().unwrap();
    let schema = write_schema(work.path());
    let collections: Vec<Value> =
        samples().into_iter().map(|(_, d)| d).filter(|d| d["kind"] == "ImageCollection").collect();
    assert_eq!(collections.len(), 3);
    for object in collections {
        if let Some(report) = schema_errors(&schema, &object, work.path()) {
            panic!("{} does not match the CRD schema:\n{report}", kind_name(&object));
        }
        let broken = cel_problems(&object, None);
        assert!(broken.is_empty(), "{} breaks CEL rules: {broken:?}", kind_name(&object));
    }
}

#[test]
fn broken_samples_are_refused_with_the_message_they_name() {
    let work = tempfile::tempdir().unwrap();
    let schema = write_schema(work.path());
    let files = common::yaml_files(&root().join("tests/broken-samples"));
    assert!(files.len() >= 8, "the broken samples are missing");
    let mut wrong = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = text
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# refused: "))
            .unwrap_or_else(|| panic!("{}: the first line must be `# refused: <message>`", path.display()))
            .trim()
            .to_string();
        let object = documents(&text, &path.display().to_string()).remove(0);
        // What the API server reports: schema errors first; CEL rules run on a schema-valid object.
        let refusal = match schema_errors(&schema, &object, work.path()) {
            Some(report) => report,
            None => cel_problems(&object, None).join("\n"),
        };
        if refusal.is_empty() {
            wrong.push(format!("{} was accepted", path.display()));
        } else if !refusal.contains(&expected) {
            wrong.push(format!("{}: expected {expected:?} in:\n{refusal}", path.display()));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}
