//! What Kubernetes itself accepts and refuses, asked of the real API server (tests/control_plane)
//! rather than of a model of it: every child the builders make, for every name the CRD allows
//! at the extremes of generation and shard count, passes a server-side dry run; the limits the
//! builders and the CRD's rules are derived from (a Service's DNS-1035 name, an Indexed Job's
//! pod hostnames, a CronJob's 52 characters, an Event note's 1,024 bytes, a Job's immutable
//! template) are the server's; and the CRD's structural schema prunes a misspelt field with a
//! warning, or refuses it under strict validation.
//!
//! The broken samples (tests/broken-samples, refused with the real server's words in
//! tests/operator_on_kubernetes.rs) cover the CRD's CEL rules, types, enums, bounds and patterns.

mod common;
mod control_plane;

use control_plane::control_plane;
use control_plane::operator::{create_namespace, install_operator};
use imgsearch::controller::children::{self, ChildConfig, MAX_NAME_LENGTH};
use imgsearch::crd::ImageCollection;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// One namespace for this binary's objects.
async fn namespace(admin: &kube::Client) -> String {
    let name = format!("rules-{}", std::process::id());
    create_namespace(admin, &name).await;
    name
}

fn dry_run() -> PostParams {
    PostParams { dry_run: true, ..PostParams::default() }
}

/// The server's refusal: its code and message, or a failure saying it accepted `what`.
fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.message),
        Err(other) => panic!("{what}: not an API refusal: {other}"),
        Ok(accepted) => panic!("{what} was accepted by the real API server: {accepted:?}"),
    }
}

/// Creates `object` (JSON) as its kind, dry run: Ok, or the refusal's message.
async fn dry_create(admin: &kube::Client, namespace: &str, object: Value) -> Result<(), String> {
    match object["kind"].as_str().unwrap_or_default() {
        "Service" => dry_create_as::<Service>(admin, namespace, object).await,
        "Deployment" => dry_create_as::<Deployment>(admin, namespace, object).await,
        "Job" => dry_create_as::<Job>(admin, namespace, object).await,
        "CronJob" => dry_create_as::<CronJob>(admin, namespace, object).await,
        other => Err(format!("no dry run here for a {other}")),
    }
}

async fn dry_create_as<K>(admin: &kube::Client, namespace: &str, object: Value) -> Result<(), String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let typed: K = serde_json::from_value(object).map_err(|e| e.to_string())?;
    Api::<K>::namespaced(admin.clone(), namespace).create(&dry_run(), &typed).await.map(drop).map_err(|e| e.to_string())
}

/// The builders' output for the names the CRD allows, at the extremes of generation and shard
/// count: nothing the real server refuses. Owner references are dropped (the dry run's owner
/// does not exist, and the garbage collector, not admission, reads them).
#[tokio::test]
async fn every_child_of_every_allowed_name_passes_the_real_servers_dry_run_at_any_generation_and_shard_count() {
    let plane = control_plane();
    let admin = plane.admin_client().await;
    let namespace = namespace(&admin).await;
    let config = ChildConfig::test();
    let longest = "a".repeat(MAX_NAME_LENGTH);
    let dashed = format!("a{}", "-b".repeat((MAX_NAME_LENGTH - 1) / 2));
    let mut refused = Vec::new();
    let mut checked = 0;
    for name in ["a", "photos", "x1", longest.as_str(), dashed.as_str()] {
        assert_eq!(children::name_problem(name), None, "{name:?} is allowed");
        for generation in [1, 9, 10, 9_999_999, 10_000_000, 123_456_789_012, i64::MAX] {
            for parallelism in [1, 10, 11, 64] {
                let mut ic = ImageCollection::test(name);
                ic.metadata.namespace = Some(namespace.clone());
                ic.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
                ic.metadata.generation = Some(generation);
                ic.spec.ingest.parallelism = parallelism;
                ic.spec.ingest.schedule = Some("*/5 * * * *".into());
                let cronjob = children::rescan_cronjob(&ic, &config).expect("builds").expect("scheduled");
                // The CronJob controller names its Jobs <cronjob>-<minutes since 1970>: 8 digits until 2160.
                let mut rescan_job = value(&cronjob)["spec"]["jobTemplate"].clone();
                rescan_job["apiVersion"] = json!("batch/v1");
                rescan_job["kind"] = json!("Job");
                rescan_job["metadata"]["name"] =
                    json!(format!("{}-{}", cronjob.metadata.name.clone().unwrap_or_default(), 99_999_999));
                for mut object in [
                    value(&children::search_service(&ic).expect("builds")),
                    value(&children::search_deployment(&ic, &config).expect("builds")),
                    value(&children::ingest_job(&ic, &config).expect("builds")),
                    value(&cronjob),
                    rescan_job,
                ] {
                    if let Some(metadata) = object["metadata"].as_object_mut() {
                        metadata.remove("ownerReferences");
                    }
                    let kind = object["kind"].as_str().unwrap_or_default().to_string();
                    if let Err(message) = dry_create(&admin, &namespace, object).await {
                        refused.push(format!(
                            "{name:?}, generation {generation}, {parallelism} shards: {kind}: {message}"
                        ));
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(refused.is_empty(), "the real API server refused:\n{}", refused.join("\n"));
    assert_eq!(checked, 5 * 7 * 4 * 5);
    let two = |g: i64| {
        let mut ic = ImageCollection::test(&longest);
        ic.metadata.namespace = Some(namespace.clone());
        ic.metadata.generation = Some(g);
        children::ingest_job_name(&ic).expect("named")
    };
    assert_ne!(two(i64::MAX), two(i64::MAX - 1), "shortened names stay distinct");

    for (name, said) in [
        ("2024-photos", "DNS-1035"),
        ("photos.v2", "DNS-1035"),
        ("Photos", "DNS-1035"),
        ("photos-", "DNS-1035"),
        (&"a".repeat(MAX_NAME_LENGTH + 1) as &str, "at most 44"),
    ] {
        let problem = children::name_problem(name).unwrap_or_else(|| panic!("{name:?} is refused"));
        assert!(problem.contains(said), "{name:?}: {problem}");
    }
}

/// A builder's output as the JSON the API server receives.
fn value<T: serde::Serialize>(object: &T) -> Value {
    serde_json::to_value(object).expect("builder output serialises")
}

/// The limits the builders and the CRD's name rules are derived from, as the real server
/// enforces them: what children::MAX_NAME_LENGTH and the CEL rules assume.
#[tokio::test]
async fn the_limits_the_builders_assume_are_the_real_servers() {
    let plane = control_plane();
    let admin = plane.admin_client().await;
    let namespace = namespace(&admin).await;
    let container = json!([{ "name": "c", "image": "imgsearch:test" }]);

    // A Service's name: Kubernetes 1.37 accepts a leading digit (RelaxedServiceNameValidation,
    // on by default from 1.36), which earlier releases refuse as not a DNS-1035 label; the
    // CRD's NAME_FORMAT keeps the older rule so a collection works on both. A dot is refused by
    // all.
    let service = |name: &str| {
        json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": name },
                "spec": { "ports": [{ "port": 8080 }] } })
    };
    dry_create(&admin, &namespace, service("2024-photos-search")).await.expect("a leading digit, on 1.37");
    let said =
        dry_create(&admin, &namespace, service("photos.v2-search")).await.expect_err("a Service name with a dot");
    assert!(said.contains("must not contain dots"), "{said}");

    // An Indexed Job's pods are named <job>-<index>: 61 characters and 10 completions fit in a
    // 63-character hostname, 11 do not.
    let job = |name: &str, completions: i64| {
        json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": name },
                "spec": { "completionMode": "Indexed", "completions": completions, "parallelism": 1,
                          "template": { "spec": { "restartPolicy": "Never", "containers": container } } } })
    };
    let name = "a".repeat(61);
    dry_create(&admin, &namespace, job(&name, 10)).await.unwrap_or_else(|e| panic!("{name}-9 is 63 characters: {e}"));
    let said = dry_create(&admin, &namespace, job(&name, 11)).await.expect_err("a hostname of 64 characters");
    assert!(said.contains("must be no more than 63 characters") || said.contains("DNS"), "{said}");

    // A CronJob's name may have 52 characters (its Jobs add 11), and its schedule no TZ.
    let cronjob = |name: &str, schedule: &str| {
        json!({ "apiVersion": "batch/v1", "kind": "CronJob", "metadata": { "name": name },
                "spec": { "schedule": schedule, "jobTemplate": { "spec": { "template": {
                    "spec": { "restartPolicy": "Never", "containers": container } } } } } })
    };
    dry_create(&admin, &namespace, cronjob(&"a".repeat(52), "@hourly")).await.expect("52 characters");
    let said = dry_create(&admin, &namespace, cronjob(&"a".repeat(53), "@hourly")).await.expect_err("53");
    assert!(said.contains("no more than 52"), "{said}");
    let said = dry_create(&admin, &namespace, cronjob("zoned", "CRON_TZ=UTC 0 * * * *")).await.expect_err("TZ");
    assert!(said.contains("TZ"), "{said}");

    // An Event's note is at most 1,024 bytes: 600 'é' (600 characters, 1,200 bytes) are
    // refused, although the server's words say "characters", and 512 (1,024 bytes) pass. (The
    // controller cuts notes on a character boundary at 1,024 bytes.)
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), &namespace);
    let event = |note: String| -> k8s_openapi::api::events::v1::Event {
        serde_json::from_value(json!({
            "metadata": { "name": "photos.1" },
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "reportingController": "imgsearch.io/controller", "reportingInstance": "test",
            "action": "Reconcile", "reason": "Ready", "type": "Normal", "note": note,
            "regarding": { "kind": "ImageCollection", "name": "photos", "namespace": namespace }
        }))
        .expect("an Event")
    };
    let (code, said) = refusal(events.create(&dry_run(), &event("é".repeat(600))).await, "a 1,200-byte note");
    assert_eq!(code, 422, "{said}");
    assert!(said.contains("at most 1024"), "{said}");
    events.create(&dry_run(), &event("é".repeat(512))).await.expect("a note of 1,024 bytes");

    // A Job's pod template is immutable: server-side apply of another image is refused.
    let params = PatchParams::apply("imgsearch-controller").force();
    let jobs: Api<Job> = Api::namespaced(admin.clone(), &namespace);
    let simple = |image: &str| {
        json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "ingest" },
                "spec": { "template": { "spec": { "restartPolicy": "Never",
                                                   "containers": [{ "name": "c", "image": image }] } } } })
    };
    jobs.patch("ingest", &params, &Patch::Apply(&simple("a"))).await.expect("created");
    let (code, said) = refusal(jobs.patch("ingest", &params, &Patch::Apply(&simple("b"))).await, "a new template");
    assert_eq!(code, 422, "{said}");
    assert!(said.contains("immutable"), "{said}");
}

/// The CRD's structural schema, as the real apiextensions server applies it: a misspelt field
/// is dropped with a warning, not stored, and the default applies; under strict field
/// validation (kubectl's default) it is refused.
#[tokio::test]
async fn the_crd_schema_prunes_a_misspelt_field_with_a_warning_or_refuses_it_under_strict_validation() {
    let plane = control_plane();
    install_operator(plane);
    let admin = plane.admin_client().await;
    let namespace = namespace(&admin).await;
    let object = |name: &str| {
        format!(
            "apiVersion: imgsearch.io/v1alpha1\nkind: ImageCollection\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
             spec:\n  milvus:\n    uri: http://milvus:19530\n  source:\n    pvc:\n      claimName: photos\n\
             \x20 deletionpolicy: Delete\n  search:\n    replicas: 2\n    replica: 3\n"
        )
    };
    let (ok, _, err) = plane.run_kubectl(&["create", "--validate=warn", "-f", "-"], Some(object("typo").as_bytes()));
    assert!(ok, "refused under --validate=warn: {err}");
    for field in ["spec.deletionpolicy", "spec.search.replica"] {
        assert!(err.contains(&format!("unknown field \"{field}\"")), "no warning for {field}: {err}");
    }
    let (ok, stored, err) =
        plane.run_kubectl(&["get", "-n", &namespace, "imagecollection", "typo", "-o", "json"], None);
    assert!(ok, "{err}");
    let stored: Value = serde_json::from_str(&stored).expect("JSON");
    assert!(stored["spec"].get("deletionpolicy").is_none(), "stored: {}", stored["spec"]);
    assert!(stored["spec"]["search"].get("replica").is_none(), "stored: {}", stored["spec"]);
    assert_eq!(stored["spec"]["deletionPolicy"], "Retain", "the default applies, not the misspelt value");

    let (ok, _, err) =
        plane.run_kubectl(&["create", "--validate=strict", "-f", "-"], Some(object("strict").as_bytes()));
    assert!(!ok, "accepted under --validate=strict");
    assert!(err.contains("strict decoding error") && err.contains("unknown field \"spec.deletionpolicy\""), "{err}");
}

/// `status.conditions` is a list map keyed by `type` in the CRD, so under server-side apply a
/// condition another manager applies (a policy engine's, a user's) is kept beside the
/// controller's, without a conflict; and a condition the controller stops applying goes.
#[tokio::test]
async fn conditions_of_two_managers_live_side_by_side_under_server_side_apply() {
    let plane = control_plane();
    install_operator(plane);
    let admin = plane.admin_client().await;
    let namespace = namespace(&admin).await;
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), &namespace);
    collections.create(&PostParams::default(), &ImageCollection::test("shared")).await.expect("create");
    let condition = |kind: &str, status: &str| {
        json!({ "type": kind, "status": status, "reason": "Test", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z" })
    };
    let status = |conditions: Vec<Value>| {
        json!({ "apiVersion": "imgsearch.io/v1alpha1", "kind": "ImageCollection",
                "metadata": { "name": "shared" }, "status": { "conditions": conditions } })
    };
    let controller = PatchParams::apply("imgsearch-controller").force();
    let policy = PatchParams::apply("policy-engine");
    let types = |object: ImageCollection| -> Vec<String> {
        object.status.map(|s| s.conditions.into_iter().map(|c| c.type_).collect()).unwrap_or_default()
    };
    let applied = collections
        .patch_status(
            "shared",
            &controller,
            &Patch::Apply(status(vec![condition("Ready", "True"), condition("Stalled", "False")])),
        )
        .await
        .expect("the controller's conditions");
    assert_eq!(types(applied), ["Ready", "Stalled"]);
    // Another manager's condition, applied without force: no conflict, nothing of the
    // controller's lost.
    let applied = collections
        .patch_status("shared", &policy, &Patch::Apply(status(vec![condition("PolicyCompliant", "True")])))
        .await
        .expect("another manager's condition is not a conflict");
    assert_eq!(types(applied), ["Ready", "Stalled", "PolicyCompliant"]);
    // The controller stops applying Stalled: it goes; the other manager's stays.
    let applied = collections
        .patch_status("shared", &controller, &Patch::Apply(status(vec![condition("Ready", "False")])))
        .await
        .expect("the controller's next conditions");
    assert_eq!(types(applied), ["Ready", "PolicyCompliant"]);
}
