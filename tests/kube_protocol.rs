//! The fake API server against the real kube client and watcher: the protocol the controller
//! tests rely on behaves as kube-apiserver's does for these calls.

mod k8s;

use std::time::Duration;

use futures::StreamExt;
use imgsearch::crd::{ImageCollection, ImageCollectionStatus, Phase};
use k8s::admission::{
    creation_problems, dns1035_label, dns1123_label, dns1123_subdomain, label_key, label_value, update_problems,
};
use k8s::fake_apiserver::FakeApiServer;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

fn collection(name: &str) -> ImageCollection {
    ImageCollection::test(name)
}

#[tokio::test]
async fn create_get_and_list_return_server_owned_metadata() {
    let (_server, address, _task) = FakeApiServer::start().await;
    let api: Api<ImageCollection> = Api::namespaced(FakeApiServer::client(address), "shop");

    let created = api.create(&PostParams::default(), &collection("products")).await.expect("create");

    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
    assert_eq!(api.get("products").await.expect("get").spec, created.spec);
    assert_eq!(api.list(&Default::default()).await.expect("list").items.len(), 1);
    let missing = api.get("nope").await.expect_err("404");
    assert!(matches!(missing, kube::Error::Api(ref s) if s.code == 404), "{missing:?}");
}

#[tokio::test]
async fn server_side_apply_creates_then_updates_and_only_spec_changes_bump_generation() {
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let jobs: Api<Job> = Api::namespaced(client.clone(), "shop");
    let params = PatchParams::apply("imgsearch-controller").force();
    let job = json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "ingest" }, "spec": { "parallelism": 1, "template": { "spec": { "containers": [] } } } });

    let created = jobs.patch("ingest", &params, &Patch::Apply(&job)).await.expect("apply creates");
    let mut changed = job.clone();
    changed["spec"]["parallelism"] = json!(4);
    let updated = jobs.patch("ingest", &params, &Patch::Apply(&changed)).await.expect("apply updates");
    let with_status = jobs
        .patch_status(
            "ingest",
            &params,
            &Patch::Apply(&json!({ "apiVersion": "batch/v1", "kind": "Job", "status": { "succeeded": 1 } })),
        )
        .await
        .expect("status");

    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(updated.metadata.generation, Some(2));
    assert_eq!(updated.spec.as_ref().and_then(|s| s.parallelism), Some(4));
    assert_eq!(with_status.metadata.generation, Some(2), "status writes leave generation alone");
    assert_eq!(with_status.status.and_then(|s| s.succeeded), Some(1));
    let verbs: Vec<String> = server
        .calls()
        .iter()
        .map(|c| {
            format!("{} {}{}", c.verb, c.resource, c.subresource.as_ref().map(|s| format!("/{s}")).unwrap_or_default())
        })
        .collect();
    // The apply that creates the Job is also authorized as a create (as kube-apiserver does).
    assert_eq!(verbs, ["patch jobs", "create jobs", "patch jobs", "patch jobs/status"]);
}

#[tokio::test]
async fn the_kube_watcher_sees_additions_changes_and_deletions() {
    let (_server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let api: Api<ImageCollection> = Api::namespaced(client.clone(), "shop");
    api.create(&PostParams::default(), &collection("before-watch")).await.unwrap();
    let mut events = watcher(Api::<ImageCollection>::all(client), watcher::Config::default()).boxed();

    let mut seen = Vec::new();
    // The writes start once the watcher has listed (an event, not a sleep that a loaded machine
    // can outrun).
    let listed = tokio::sync::Notify::new();
    let writer = async {
        listed.notified().await;
        api.create(&PostParams::default(), &collection("during-watch")).await.unwrap();
        let status = ImageCollectionStatus { phase: Some(Phase::Ready), ..Default::default() };
        api.patch_status("during-watch", &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
            .await
            .unwrap();
        api.delete("before-watch", &DeleteParams::default()).await.unwrap();
    };
    let reader = async {
        while let Some(event) = events.next().await {
            match event.expect("watch event") {
                watcher::Event::InitApply(o) => seen.push(format!("init {}", o.metadata.name.unwrap())),
                watcher::Event::Apply(o) => {
                    seen.push(format!("apply {} {:?}", o.metadata.name.unwrap(), o.status.and_then(|s| s.phase)))
                }
                watcher::Event::Delete(o) => {
                    seen.push(format!("delete {}", o.metadata.name.unwrap()));
                    break;
                }
                watcher::Event::InitDone => listed.notify_one(),
                watcher::Event::Init => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), futures::future::join(writer, reader)).await.expect("events arrive");

    assert_eq!(
        seen,
        ["init before-watch", "apply during-watch None", "apply during-watch Some(Ready)", "delete before-watch"]
    );
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_gets_410_gone_and_the_kube_watcher_lists_again() {
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let api: Api<ImageCollection> = Api::namespaced(client.clone(), "shop");
    api.create(&PostParams::default(), &collection("first")).await.unwrap();
    let mut events = watcher(Api::<ImageCollection>::all(client), watcher::Config::default()).boxed();
    let mut seen = Vec::new();
    let reader = async {
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::InitApply(o)) => seen.push(format!("init {}", o.metadata.name.unwrap())),
                Ok(watcher::Event::Apply(o)) => seen.push(format!("apply {}", o.metadata.name.unwrap())),
                Ok(watcher::Event::InitDone) => {
                    seen.push("listed".to_string());
                    if seen.iter().filter(|s| *s == "listed").count() == 2 {
                        break;
                    }
                    // While the watcher is between watches: a change, then compaction of the
                    // history it would resume from.
                    api.create(&PostParams::default(), &collection("second")).await.unwrap();
                    server.compact_and_drop_watches();
                }
                Ok(_) => {}
                // The 410 surfaces as an error before the relist: expected.
                Err(error) => {
                    seen.push(format!("error {}", if error.to_string().contains("410") { "410" } else { "other" }))
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), reader).await.expect("the watcher lists again after 410 Gone");
    assert!(server.expired_watches() >= 1, "the resumed watch was refused as too old: {seen:?}");
    assert!(seen.contains(&"init second".to_string()), "the relist brought what the lost history held: {seen:?}");
}

#[tokio::test]
async fn deleting_an_object_with_a_finalizer_waits_until_the_finalizer_is_removed() {
    let (server, address, _task) = FakeApiServer::start().await;
    let api: Api<ImageCollection> = Api::namespaced(FakeApiServer::client(address), "shop");
    let mut object = collection("products");
    object.metadata.finalizers = Some(vec!["imgsearch.io/cleanup".into()]);
    api.create(&PostParams::default(), &object).await.unwrap();

    api.delete("products", &DeleteParams::default()).await.unwrap();
    let deleting = api.get("products").await.expect("still there while the finalizer is set");
    assert!(deleting.metadata.deletion_timestamp.is_some());

    // kube-runtime's finalizer helper removes its finalizer with a JSON patch like this one.
    let remove = json_patch::Patch(vec![
        serde_json::from_value(
            json!({ "op": "test", "path": "/metadata/finalizers/0", "value": "imgsearch.io/cleanup" }),
        )
        .unwrap(),
        serde_json::from_value(json!({ "op": "remove", "path": "/metadata/finalizers/0" })).unwrap(),
    ]);
    api.patch("products", &PatchParams::default(), &Patch::Json::<()>(remove)).await.expect("json patch");
    assert!(api.get("products").await.is_err(), "gone once the last finalizer is removed");
    assert!(server.objects("imgsearch.io/v1alpha1/imagecollections").is_empty());
}

/// The garbage collector as kube-controller-manager runs it with the default (background)
/// propagation: the owner goes at once, what it owned only when the collector gets to it; a
/// dependent with another owner still alive stays; pods are deleted gracefully.
#[tokio::test]
async fn what_a_deleted_owner_owned_goes_later_by_the_garbage_collector() {
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let api: Api<ImageCollection> = Api::namespaced(client.clone(), "shop");
    let owner = api.create(&PostParams::default(), &collection("products")).await.unwrap();
    let other = api.create(&PostParams::default(), &collection("other")).await.unwrap();
    let owner_ref = kube::Resource::controller_owner_ref(&owner, &()).unwrap();
    let mut other_ref = kube::Resource::controller_owner_ref(&other, &()).unwrap();
    other_ref.controller = None;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "shop");
    for (name, owners) in [("ingest", vec![owner_ref.clone()]), ("shared", vec![owner_ref.clone(), other_ref])] {
        let job = json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": name, "ownerReferences": owners }, "spec": { "template": {} } });
        jobs.patch(name, &PatchParams::apply("t"), &Patch::Apply(&job)).await.unwrap();
    }
    let pod = json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "ingest-0", "ownerReferences": [owner_ref] }, "spec": { "containers": [] } });
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, "shop");
    pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap()).await.unwrap();

    server.pause_garbage_collection(true);
    api.delete("products", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(k8s::fake_apiserver::GC_PERIOD * 3).await;
    assert!(api.get_opt("products").await.unwrap().is_none(), "the owner is gone at once");
    assert!(jobs.get_opt("ingest").await.unwrap().is_some(), "its Job waits for the garbage collector");

    server.pause_garbage_collection(false);
    server.collect_garbage();
    assert!(jobs.get_opt("ingest").await.unwrap().is_none(), "collected once the collector ran");
    assert!(jobs.get_opt("shared").await.unwrap().is_some(), "a dependent with a live owner stays");
    let pod = pods.get("ingest-0").await.expect("a pod is deleted gracefully: it stays until the kubelet lets go");
    assert!(pod.metadata.deletion_timestamp.is_some(), "{pod:?}");

    // Without a test calling it, the collector runs on its own.
    api.delete("other", &DeleteParams::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while jobs.get_opt("shared").await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the garbage collector did not run within 5 s");
        tokio::time::sleep(k8s::fake_apiserver::GC_PERIOD).await;
    }
}

/// Schedules as robfig/cron v3 (what kube-controller-manager parses them with) reads them:
/// steps, ranges, lists, names, descriptors, and day-of-month OR day-of-week when both are
/// restricted but AND when either is a star.
#[test]
fn the_fake_cron_controller_reads_schedules_as_robfig_cron_does() {
    use k8s::cronjob::schedule_matches;
    let at = |text: &str| text.parse::<k8s_openapi::jiff::Timestamp>().unwrap();
    let cases = [
        ("*/15 * * * *", "2026-02-13T10:45:00Z", true),
        ("*/15 * * * *", "2026-02-13T10:50:00Z", false),
        ("30 2 * * *", "2026-02-13T02:30:59Z", true),
        ("30 2 * * *", "2026-02-13T02:31:00Z", false),
        ("0 9-17/4 * * MON-FRI", "2026-02-13T13:00:00Z", true), // Friday, 9, 13, 17
        ("0 9-17/4 * * MON-FRI", "2026-02-08T13:00:00Z", false), // Sunday
        ("0 0 13 * 5", "2026-02-06T00:00:00Z", true),           // a Friday, not the 13th: OR
        ("0 0 13 * 5", "2026-01-13T00:00:00Z", true),           // the 13th, a Tuesday: OR
        ("0 0 13 * 5", "2026-01-14T00:00:00Z", false),
        ("0 0 13 * *", "2026-01-14T00:00:00Z", false), // a star day-of-week: AND
        ("0 0 */2 * 5", "2026-02-13T00:00:00Z", true), // */2 is not a star: OR
        ("0 0 13 * *,*/2", "2026-01-14T00:00:00Z", false), // a star anywhere in the list: AND
        ("0 0 * JAN,mar *", "2026-03-01T00:00:00Z", true),
        ("0 0 * JAN,mar *", "2026-02-01T00:00:00Z", false),
        ("@weekly", "2026-02-08T00:00:00Z", true), // Sunday midnight
        ("@weekly", "2026-02-09T00:00:00Z", false),
        ("@hourly", "2026-02-09T07:00:00Z", true),
        ("@monthly", "2026-03-01T00:00:00Z", true),
    ];
    for (schedule, time, expected) in cases {
        assert_eq!(schedule_matches(schedule, at(time)), Ok(expected), "{schedule} at {time}");
    }
    assert!(schedule_matches("0 0 * * 8", at("2026-02-09T00:00:00Z")).is_err(), "day-of-week is 0-6");
    assert!(schedule_matches("@every 5m", at("2026-02-09T00:00:00Z")).is_err(), "not emulated, said so");
}

/// The fake's CronJob controller: a Job per fired schedule, named and owned as
/// kube-controller-manager makes it, none while suspended or while one runs under Forbid,
/// finished Jobs beyond the history limit deleted.
#[tokio::test]
async fn the_fake_cron_controller_starts_jobs_on_schedule_as_kube_controller_manager_does() {
    use k8s_openapi::api::batch::v1::CronJob;
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), "shop");
    let jobs: Api<Job> = Api::namespaced(client, "shop");
    let cronjob = json!({
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": { "name": "rescan" },
        "spec": {
            "schedule": "*/5 * * * *", "concurrencyPolicy": "Forbid", "successfulJobsHistoryLimit": 1,
            "jobTemplate": {
                "metadata": { "labels": { "app": "rescan" } },
                "spec": { "template": { "spec": { "restartPolicy": "Never", "containers": [{ "name": "c", "image": "i" }] } } }
            }
        }
    });
    // The clock also runs for real: create it well clear of a five-minute boundary, so that
    // "nothing before the schedule fires" is not decided by where the wall clock happens to be.
    let into_period = k8s_openapi::jiff::Timestamp::now().as_second().rem_euclid(300);
    if into_period >= 295 {
        tokio::time::sleep(Duration::from_secs((301 - into_period) as u64)).await;
    }
    let created = cronjobs.create(&PostParams::default(), &serde_json::from_value(cronjob).unwrap()).await.unwrap();
    server.run_cronjobs();
    let names = || async {
        jobs.list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|j| j.metadata.name.unwrap())
            .collect::<Vec<_>>()
    };
    assert!(names().await.is_empty(), "nothing before the schedule fires");

    server.advance_clock(Duration::from_secs(11 * 60));
    server.run_cronjobs();
    let first = names().await;
    assert_eq!(first.len(), 1, "one Job for the latest fired minute, not one per missed run: {first:?}");
    let job = jobs.get(&first[0]).await.unwrap();
    let minutes: i64 = first[0].strip_prefix("rescan-").and_then(|m| m.parse().ok()).expect("<cronjob>-<minutes>");
    assert_eq!(minutes % 5, 0, "a minute the schedule names");
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("CronJob", created.metadata.uid.as_deref().unwrap(), Some(true))
    );
    assert_eq!(job.metadata.labels.as_ref().unwrap()["app"], "rescan");
    let stored = cronjobs.get("rescan").await.unwrap();
    let status = stored.status.unwrap();
    assert_eq!(status.active.map(|a| a.len()), Some(1));
    assert_eq!(status.last_schedule_time.map(|t| t.0.as_second() / 60), Some(minutes));

    // Forbid: while it runs, a fired schedule starts nothing.
    server.advance_clock(Duration::from_secs(5 * 60));
    server.run_cronjobs();
    assert_eq!(names().await, first, "Forbid: no second Job while the first runs");
    // Finished: the missed run starts; with a history limit of 1 the older finished one goes
    // once the newer one has finished too.
    let complete = json!({ "status": { "conditions": [{ "type": "Complete", "status": "True" }] } });
    jobs.patch_status(&first[0], &PatchParams::default(), &Patch::Merge(&complete)).await.unwrap();
    server.run_cronjobs();
    let both = names().await;
    assert_eq!(both.len(), 2, "{both:?}");
    let second = both.iter().find(|n| **n != first[0]).unwrap().clone();
    jobs.patch_status(&second, &PatchParams::default(), &Patch::Merge(&complete)).await.unwrap();
    server.run_cronjobs();
    assert_eq!(names().await, vec![second.clone()], "successfulJobsHistoryLimit 1 keeps the newest");

    // Suspended: nothing, however long.
    cronjobs
        .patch("rescan", &PatchParams::default(), &Patch::Merge(&json!({ "spec": { "suspend": true } })))
        .await
        .unwrap();
    server.advance_clock(Duration::from_secs(3600));
    server.run_cronjobs();
    assert_eq!(names().await, vec![second], "suspended: no Job");
    assert!(server.cron_problems().is_empty(), "{:?}", server.cron_problems());
}

/// Cases from apimachinery's validation_test.go (TestIsDNS1123Label, TestIsDNS1035Label,
/// TestIsValidLabelValue).
#[test]
fn admission_names_and_labels_follow_apimachinery() {
    for good in ["a", "ab", "abc", "a1", "a-1", "a--1--2--b", "0", "01", "012", "1a", "1-a", &"a".repeat(63)] {
        assert!(dns1123_label(good).is_empty(), "{good:?} is a DNS-1123 label");
    }
    for bad in [
        "",
        "A",
        "ABC",
        "aBc",
        "A1",
        "A-1",
        "1-A",
        "-",
        "a-",
        "-a",
        "1-",
        "-1",
        "_",
        "a_",
        "a.b",
        "a b",
        &"a".repeat(64),
    ] {
        assert!(!dns1123_label(bad).is_empty(), "{bad:?} is not a DNS-1123 label");
    }
    for good in ["a", "ab", "a1", "a-1", "a--1--2--b", &"a".repeat(63)] {
        assert!(dns1035_label(good).is_empty(), "{good:?} is a DNS-1035 label");
    }
    for bad in ["0", "01", "1a", "1-a", "2024-photos", "photos.v2", "A", "a-", "", &"a".repeat(64)] {
        assert!(!dns1035_label(bad).is_empty(), "{bad:?} is not a DNS-1035 label");
    }
    for good in ["a.b", "a.b.c", "1.a", "a-1.b-2", &format!("{}.{}", "a".repeat(63), "b".repeat(63))] {
        assert!(dns1123_subdomain(good).is_empty(), "{good:?} is a DNS-1123 subdomain");
    }
    for bad in ["a.", ".a", "a..b", "A.b", &"a".repeat(254)] {
        assert!(!dns1123_subdomain(bad).is_empty(), "{bad:?} is not a DNS-1123 subdomain");
    }
    for good in [
        "simple",
        "now-with-dashes",
        "1-starts-with-num",
        "end-with-num-1",
        "1234",
        "starts-with-num",
        "a.b",
        "A_B",
        "",
        &"a".repeat(63),
    ] {
        assert!(label_value(good).is_empty(), "{good:?} is a label value");
    }
    for bad in [
        "nospecialchars%^=@",
        "Tama-nui-te-rā.is_Māori.a",
        "-starts-with-dash",
        "ends-with-dash-",
        ".starts.with.dot",
        &"a".repeat(64),
    ] {
        assert!(!label_value(bad).is_empty(), "{bad:?} is not a label value");
    }
    assert!(label_key("imgsearch.io/collection").is_empty());
    assert!(label_key("app.kubernetes.io/instance").is_empty());
    assert!(!label_key("Imgsearch.io/collection").is_empty());
    assert!(!label_key("imgsearch.io/").is_empty());
}

/// events.k8s.io/v1 limits a note to 1,024 bytes: 600 'é' (1,200 bytes, 600 characters) are
/// refused, 512 (1,024 bytes) pass.
#[test]
fn admission_an_event_note_over_1024_bytes_is_refused() {
    let event = |note: String| json!({ "metadata": { "name": "photos.1" }, "note": note, "reason": "Ready" });
    let refused = creation_problems("events", &event("é".repeat(600)));
    assert!(refused.iter().any(|p| p.contains("note: Too long")), "{refused:?}");
    assert!(creation_problems("events", &event("é".repeat(512))).is_empty());
}

#[test]
fn admission_an_indexed_job_whose_pod_hostnames_would_be_too_long_is_refused() {
    let job = |name: &str, completions: i64| serde_json::json!({ "metadata": { "name": name }, "spec": { "completionMode": "Indexed", "completions": completions, "template": {} } });
    let name = "a".repeat(61);
    assert!(creation_problems("jobs", &job(&name, 10)).is_empty(), "{name}-9 is 63 characters");
    let refused = creation_problems("jobs", &job(&name, 11));
    assert!(refused.iter().any(|p| p.contains("invalid DNS label")), "{refused:?}");
    let cronjob = serde_json::json!({ "metadata": { "name": "a".repeat(53) }, "spec": { "schedule": "@hourly" } });
    assert!(creation_problems("cronjobs", &cronjob).iter().any(|p| p.contains("no more than 52")));
    let zoned = serde_json::json!({ "metadata": { "name": "a" }, "spec": { "schedule": "CRON_TZ=UTC 0 * * * *" } });
    assert!(creation_problems("cronjobs", &zoned).iter().any(|p| p.contains("cannot use TZ")));
    let service = serde_json::json!({ "metadata": { "name": "2024-photos-search" } });
    assert!(creation_problems("services", &service).iter().any(|p| p.contains("DNS-1035")));
}

#[test]
fn admission_immutable_fields_cannot_change() {
    let job = |image: &str| serde_json::json!({ "metadata": { "name": "j" }, "spec": { "template": { "spec": { "containers": [{ "image": image }] } } } });
    assert!(update_problems("jobs", &job("a"), &job("a")).is_empty());
    let refused = update_problems("jobs", &job("a"), &job("b"));
    assert!(refused.iter().any(|p| p.contains("spec.template: Invalid value: field is immutable")), "{refused:?}");
    let deployment = |app: &str| serde_json::json!({ "metadata": { "name": "d" }, "spec": { "selector": { "matchLabels": { "app": app } }, "template": { "metadata": { "labels": { "app": app } } } } });
    assert!(
        update_problems("deployments", &deployment("a"), &deployment("b")).iter().any(|p| p.contains("spec.selector"))
    );
}

#[tokio::test]
async fn the_crds_cel_rules_run_on_create_and_update_with_the_messages_of_the_committed_crd() {
    use imgsearch::crd::rules;
    let (server, address, _task) = FakeApiServer::start().await;
    let api: Api<ImageCollection> = Api::namespaced(FakeApiServer::client(address), "shop");
    let refusal = |error: kube::Error| match error {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422, "{status:?}");
            status.message
        }
        other => panic!("expected a 422, got {other:?}"),
    };

    for (name, message) in [
        ("2024-photos", rules::NAME_FORMAT),
        ("photos.v2", rules::NAME_FORMAT),
        ("a-name-that-is-far-too-long-for-its-children-x", rules::NAME_LENGTH),
    ] {
        let error = api.create(&PostParams::default(), &collection(name)).await.expect_err("refused");
        let said = refusal(error);
        assert!(said.contains(message), "{name}: {said}");
    }
    let longest = "a".repeat(imgsearch::controller::children::MAX_NAME_LENGTH);
    api.create(&PostParams::default(), &collection(&longest)).await.expect("44 characters are fine");

    let mut scheduled = collection("zoned");
    scheduled.spec.ingest.schedule = Some("CRON_TZ=Europe/Berlin 0 3 * * *".into());
    let said = refusal(api.create(&PostParams::default(), &scheduled).await.expect_err("refused"));
    assert!(said.contains(rules::SCHEDULE_TIME_ZONE), "{said}");
    scheduled.spec.ingest.schedule = Some("every night".into());
    let said = refusal(api.create(&PostParams::default(), &scheduled).await.expect_err("refused"));
    assert!(said.contains(rules::SCHEDULE_FIELDS), "{said}");

    let created = api.create(&PostParams::default(), &collection("products")).await.expect("create");
    assert_eq!(
        server.object("imgsearch.io/v1alpha1/imagecollections", "shop", "products").unwrap()["spec"]["deletionPolicy"],
        "Retain",
        "schema defaults are stored"
    );
    let mut renamed = created.clone();
    renamed.spec.collection_name = Some("elsewhere".into());
    let said = refusal(api.replace("products", &PostParams::default(), &renamed).await.expect_err("refused"));
    assert!(said.contains(rules::COLLECTION_IMMUTABLE), "transition rules see the stored object: {said}");
}

#[tokio::test]
async fn children_a_real_cluster_would_refuse_are_refused_with_422() {
    let (_server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let params = PatchParams::apply("imgsearch-controller").force();
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "shop");
    let service =
        json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "2024-photos-search" }, "spec": {} });
    let error = services.patch("2024-photos-search", &params, &Patch::Apply(&service)).await.expect_err("refused");
    assert!(matches!(&error, kube::Error::Api(s) if s.code == 422 && s.message.contains("DNS-1035")), "{error:?}");

    let jobs: Api<Job> = Api::namespaced(client, "shop");
    let job = |image: &str| json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "ingest" }, "spec": { "template": { "spec": { "containers": [{ "name": "c", "image": image }] } } } });
    jobs.patch("ingest", &params, &Patch::Apply(&job("a"))).await.expect("created");
    let error =
        jobs.patch("ingest", &params, &Patch::Apply(&job("b"))).await.expect_err("a Job's template is immutable");
    assert!(matches!(&error, kube::Error::Api(s) if s.code == 422 && s.message.contains("immutable")), "{error:?}");
}

/// The builders' output for the names the CRD allows, at the extremes of generation and shard
/// count, through the API server's own name rules: nothing a real cluster would refuse.
#[test]
fn every_child_of_every_allowed_name_is_valid_at_any_generation_and_shard_count() {
    use imgsearch::controller::children::{self, ChildConfig, MAX_NAME_LENGTH};
    let config = ChildConfig::test();
    let longest = "a".repeat(MAX_NAME_LENGTH);
    let dashed = format!("a{}", "-b".repeat((MAX_NAME_LENGTH - 1) / 2));
    let mut checked = 0;
    for name in ["a", "photos", "x1", longest.as_str(), dashed.as_str()] {
        assert_eq!(children::name_problem(name), None, "{name:?} is allowed");
        for generation in [1, 9, 10, 9_999_999, 10_000_000, 123_456_789_012, i64::MAX] {
            for parallelism in [1, 10, 11, 64] {
                let mut ic = collection(name);
                ic.metadata.namespace = Some("shop".into());
                ic.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
                ic.metadata.generation = Some(generation);
                ic.spec.ingest.parallelism = parallelism;
                ic.spec.ingest.schedule = Some("*/5 * * * *".into());
                let cronjob = children::rescan_cronjob(&ic, &config).expect("builds").expect("scheduled");
                // The CronJob controller names its Jobs <cronjob>-<minutes since 1970>: 8 digits until 2160.
                let mut rescan_job = value(&cronjob)["spec"]["jobTemplate"].clone();
                rescan_job["metadata"]["name"] =
                    json!(format!("{}-{}", cronjob.metadata.name.clone().unwrap_or_default(), 99_999_999));
                for (resource, object) in [
                    ("services", value(&children::search_service(&ic).expect("builds"))),
                    ("deployments", value(&children::search_deployment(&ic, &config).expect("builds"))),
                    ("jobs", value(&children::ingest_job(&ic, &config).expect("builds"))),
                    ("cronjobs", value(&cronjob)),
                    ("jobs", rescan_job),
                ] {
                    let problems = creation_problems(resource, &object);
                    assert!(
                        problems.is_empty(),
                        "{name:?}, generation {generation}, {parallelism} shards: {resource}: {problems:?}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 5 * 7 * 4 * 5);
    let two = |g: i64| {
        let mut ic = collection(&longest);
        ic.metadata.namespace = Some("shop".into());
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
fn value<T: serde::Serialize>(object: &T) -> serde_json::Value {
    serde_json::to_value(object).expect("builder output serialises")
}

/// A raw write, as `kubectl` or a GitOps tool sends it, to see the status and headers.
async fn post_collection(address: std::net::SocketAddr, query: &str, body: serde_json::Value) -> reqwest::Response {
    imgsearch::source::install_crypto_provider();
    reqwest::Client::new()
        .post(format!("http://{address}/apis/imgsearch.io/v1alpha1/namespaces/shop/imagecollections{query}"))
        .json(&body)
        .send()
        .await
        .expect("the fake API server answers")
}

#[tokio::test]
async fn the_crd_schema_prunes_unknown_fields_with_a_warning_and_refuses_wrong_values() {
    let (server, address, _task) = FakeApiServer::start().await;
    let object = |name: &str, spec: serde_json::Value| json!({ "apiVersion": "imgsearch.io/v1alpha1", "kind": "ImageCollection", "metadata": { "name": name }, "spec": spec });
    let base = json!({ "milvus": { "uri": "http://milvus:19530" }, "source": { "pvc": { "claimName": "photos" } } });

    // A misspelt field (deletionpolicy) is dropped with a warning, not stored, by default...
    let mut typo = base.clone();
    typo["deletionpolicy"] = json!("Delete");
    typo["search"] = json!({ "replicas": 2, "replica": 3 });
    let response = post_collection(address, "", object("typo", typo.clone())).await;
    assert_eq!(response.status(), 201);
    let warnings: Vec<String> =
        response.headers().get_all("warning").iter().map(|v| v.to_str().unwrap_or_default().to_string()).collect();
    assert_eq!(
        warnings,
        ["299 - \"unknown field \\\"spec.deletionpolicy\\\"\"", "299 - \"unknown field \\\"spec.search.replica\\\"\""],
        "one Warning header per unknown field"
    );
    let stored = server.object("imgsearch.io/v1alpha1/imagecollections", "shop", "typo").expect("stored");
    assert!(stored["spec"].get("deletionpolicy").is_none() && stored["spec"]["search"].get("replica").is_none());
    assert_eq!(stored["spec"]["deletionPolicy"], "Retain", "the default applies, not the misspelt value");
    // ...and refused under fieldValidation=Strict (what kubectl sends).
    let response = post_collection(address, "?fieldValidation=Strict", object("strict", typo)).await;
    assert_eq!(response.status(), 400);
    let body = response.text().await.unwrap_or_default();
    assert!(body.contains("strict decoding error: unknown field \\\"spec.deletionpolicy\\\""), "{body}");

    // Values of the wrong type, outside an enum, a bound or a pattern: 422 in the server's words.
    for (field, value, expected) in [
        (
            "search",
            json!({ "replicas": "two" }),
            "spec.search.replicas in body must be of type integer: \\\"string\\\"",
        ),
        ("search", json!({ "replicas": -1 }), "spec.search.replicas in body should be greater than or equal to 0"),
        ("deletionPolicy", json!("Purge"), "spec.deletionPolicy: Unsupported value: \\\"Purge\\\""),
        ("milvus", json!({ "uri": "milvus:19530" }), "spec.milvus.uri in body should match"),
    ] {
        let mut spec = base.clone();
        spec[field] = value;
        let response = post_collection(address, "", object("bad", spec)).await;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, 422, "{field}: {body}");
        assert!(body.contains(expected), "{field}: expected {expected:?} in {body}");
    }
    assert!(server.object("imgsearch.io/v1alpha1/imagecollections", "shop", "bad").is_none());
}
