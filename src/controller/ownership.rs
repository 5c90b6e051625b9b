//! What of a namespace is the collection's to change: children it controls, or that imgsearch
//! made for it (an earlier object of the same name, an orphaned one with its labels); anything
//! else of a child's name is left alone. And how the controller deletes what it owns.

use kube::api::{Api, DeleteParams, ListParams, PropagationPolicy};
use kube::{Resource, ResourceExt};

use super::children::{LABEL_COLLECTION, MANAGER};
use super::error::{Error, Result};
use crate::crd::ImageCollection;

/// Whether `ic` (this very object, by uid) is the controller owner of `child`.
pub(super) fn owned_by(child: &impl Resource, ic: &ImageCollection) -> bool {
    let uid = ic.metadata.uid.as_deref();
    child
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|owner| Some(owner.uid.as_str()) == uid && owner.controller == Some(true))
}

/// The child `name` as it exists, if it does and the operator may apply it: when this
/// collection controls it, when imgsearch made it for an earlier object of this name (the
/// garbage collector has not reached it yet), or when it carries imgsearch's labels for this
/// collection and has no controller (left by `kubectl delete --cascade=orphan`). Anything else
/// is [`Error::NameTaken`] and is not touched: a forced apply would take it over, and the
/// garbage collector would then delete it with the collection.
pub(super) async fn claim<K>(api: &Api<K>, name: &str, ic: &ImageCollection) -> Result<Option<K>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(existing) = api.get_opt(name).await? else { return Ok(None) };
    match foreign_owner(existing.meta(), ic) {
        None => Ok(Some(existing)),
        Some(why) => Err(Error::NameTaken { why }),
    }
}

/// Why an object of a child's name is not the collection's to apply, or `None` when it is
/// (see [`claim`]).
pub(super) fn foreign_owner(meta: &kube::api::ObjectMeta, ic: &ImageCollection) -> Option<String> {
    let controller = meta.owner_references.iter().flatten().find(|owner| owner.controller == Some(true));
    match controller {
        Some(owner) if Some(owner.uid.as_str()) == ic.metadata.uid.as_deref() => None,
        Some(owner)
            // Any version of the group: a controller of another version made it just as well.
            if owner.kind == ImageCollection::kind(&())
                && owner.api_version.split('/').next() == Some(&*ImageCollection::group(&()))
                && owner.name == ic.name_any() =>
        {
            None
        }
        Some(owner) => Some(format!("it is controlled by {} {}", owner.kind, owner.name)),
        None => {
            let labels = meta.labels.as_ref();
            let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
            let ours = label("app.kubernetes.io/managed-by") == Some(MANAGER)
                && label(LABEL_COLLECTION) == Some(&ic.name_any());
            (!ours).then(|| "it has no controller and not imgsearch's labels".to_string())
        }
    }
}

/// Deletes the objects `selector` finds that this very object owns (background propagation); one
/// already gone is no failure.
pub(super) async fn delete_owned<K>(api: Api<K>, ic: &ImageCollection, selector: &ListParams) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for object in api.list(selector).await?.items {
        if owned_by(&object, ic) && object.meta().deletion_timestamp.is_none() {
            match api.delete(&object.name_any(), &background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(())
}

/// Deletes the object, then (the garbage collector, in the background) what it owns.
pub(super) fn background() -> DeleteParams {
    DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..DeleteParams::default() }
}

/// Deletes the object and leaves what it owns (its ReplicaSets) in place, their owner
/// reference removed by the garbage collector.
pub(super) fn orphan() -> DeleteParams {
    DeleteParams { propagation_policy: Some(PropagationPolicy::Orphan), ..DeleteParams::default() }
}

/// Deletes the object only once what it owns (a Job's pods) is gone.
pub(super) fn foreground() -> DeleteParams {
    DeleteParams { propagation_policy: Some(PropagationPolicy::Foreground), ..DeleteParams::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_claimed_only_when_imgsearch_made_it_for_a_collection_of_this_name() {
        let ic: ImageCollection = serde_json::from_value(serde_json::json!({
            "apiVersion": "imgsearch.io/v1alpha1", "kind": "ImageCollection",
            "metadata": { "name": "photos", "namespace": "ns", "uid": "u-now" },
            "spec": { "milvus": { "uri": "http://milvus:19530" }, "source": { "pvc": { "claimName": "photos" } } }
        }))
        .unwrap();
        let meta = |owner: serde_json::Value, labels: serde_json::Value| -> kube::api::ObjectMeta {
            serde_json::from_value(
                serde_json::json!({ "name": "photos-search", "ownerReferences": owner, "labels": labels }),
            )
            .unwrap()
        };
        let controller = |kind: &str, api: &str, name: &str, uid: &str| serde_json::json!([{ "apiVersion": api, "kind": kind, "name": name, "uid": uid, "controller": true }]);
        let ours = serde_json::json!({ "app.kubernetes.io/managed-by": MANAGER, LABEL_COLLECTION: "photos" });
        let api = ImageCollection::api_version(&());
        let none = serde_json::Value::Null;
        // This collection's, or an earlier collection of this name's (the collector is behind).
        assert_eq!(
            foreign_owner(&meta(controller("ImageCollection", &api, "photos", "u-now"), none.clone()), &ic),
            None
        );
        assert_eq!(
            foreign_owner(&meta(controller("ImageCollection", &api, "photos", "u-old"), none.clone()), &ic),
            None
        );
        let later = controller("ImageCollection", "imgsearch.io/v1", "photos", "u-old");
        assert_eq!(foreign_owner(&meta(later, none.clone()), &ic), None, "made by a controller of another version");
        // Left without an owner by `--cascade=orphan`, with imgsearch's labels for it.
        assert_eq!(foreign_owner(&meta(none.clone(), ours.clone()), &ic), None);
        // Anything else is someone else's.
        let other = ImageCollection::kind(&());
        for (owner, labels, why) in [
            (none.clone(), none.clone(), "it has no controller and not imgsearch's labels"),
            (none.clone(), serde_json::json!({ LABEL_COLLECTION: "photos" }), "it has no controller"),
            (controller(&other, &api, "albums", "u-2"), ours.clone(), "it is controlled by ImageCollection albums"),
            (controller("HelmRelease", "helm.x/v1", "photos", "u-3"), ours, "it is controlled by HelmRelease photos"),
            (controller(&other, "example.com/v1", "photos", "u-4"), none, "it is controlled by ImageCollection photos"),
        ] {
            let found = foreign_owner(&meta(owner, labels), &ic).unwrap_or_default();
            assert!(found.starts_with(why), "{found:?} should start with {why:?}");
        }
    }
}
