//! Objects for the integration tests (tests/), so every test starts from the same collection
//! and changes only what it is about. (The builders' unit tests in controller/ spell out each
//! whole spec they check in YAML instead.) Compiled only for tests: `cfg(test)` for the unit
//! tests, and the `fixtures` feature, which the crate's dev-dependency on itself turns on, for
//! the integration tests, which cannot see `cfg(test)` items.

use serde_json::{Value, json};

use crate::controller::children::ChildConfig;
use crate::crd::{ImageCollection, ImageCollectionSpec};

impl ImageCollection {
    /// A collection named `name` as a user would apply it: the `photos` claim as its source and
    /// Milvus at `http://milvus:19530`, everything else defaulted. No namespace, uid or
    /// generation yet: [`ImageCollection::stored`] adds what the API server would.
    pub fn test(name: &str) -> Self {
        Self::new(
            name,
            spec(json!({ "milvus": { "uri": "http://milvus:19530" }, "source": { "pvc": { "claimName": "photos" } } })),
        )
    }

    /// The spec with `changes` merged in (a JSON merge patch, RFC 7386: objects merge, `null`
    /// removes, anything else replaces), e.g. `.with_spec(json!({ "deletionPolicy": "Delete" }))`.
    pub fn with_spec(mut self, changes: Value) -> Self {
        let mut value = serde_json::to_value(&self.spec).unwrap_or(Value::Null);
        merge(&mut value, changes);
        self.spec = spec(value);
        self
    }

    /// As the API server stores it: in `namespace`, with a uid and a generation.
    pub fn stored(mut self, namespace: &str, uid: &str, generation: i64) -> Self {
        self.metadata.namespace = Some(namespace.into());
        self.metadata.uid = Some(uid.into());
        self.metadata.generation = Some(generation);
        self
    }
}

impl ChildConfig {
    /// The controller's settings in tests: an image no registry needs to hold.
    pub fn test() -> Self {
        Self { image: "imgsearch:test".into(), image_pull_policy: None }
    }
}

/// A spec from JSON; a fixture that does not parse is a broken test, so it panics saying so.
fn spec(value: Value) -> ImageCollectionSpec {
    match serde_json::from_value(value) {
        Ok(spec) => spec,
        Err(error) => panic!("a test's ImageCollection spec does not parse: {error}"),
    }
}

fn merge(target: &mut Value, changes: Value) {
    match (target, changes) {
        (Value::Object(target), Value::Object(changes)) => {
            for (key, change) in changes {
                if change.is_null() {
                    target.remove(&key);
                } else {
                    merge(target.entry(key).or_insert(Value::Null), change);
                }
            }
        }
        (target, change) => *target = change,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_merge_into_the_defaults() {
        let ic = ImageCollection::test("photos")
            .with_spec(json!({ "milvus": { "database": "shop" }, "source": { "pvc": { "path": "/a" } } }))
            .stored("shop", "uid-1", 4);
        assert_eq!(ic.spec.milvus.uri.as_deref(), Some("http://milvus:19530"), "kept");
        assert_eq!(ic.spec.milvus.database.as_deref(), Some("shop"), "added");
        assert_eq!(
            ic.spec.source.pvc.as_ref().map(|p| (p.claim_name.as_str(), p.path.as_str())),
            Some(("photos", "/a"))
        );
        assert_eq!((ic.metadata.namespace.as_deref(), ic.metadata.generation), (Some("shop"), Some(4)));
        let s3 =
            ImageCollection::test("bucket").with_spec(json!({ "source": { "pvc": null, "s3": { "bucket": "b" } } }));
        assert!(s3.spec.source.pvc.is_none() && s3.spec.source.s3.is_some(), "null removes");
    }
}
