//! The Secrets an ImageCollection names: the Milvus credentials, sent only to the address the
//! Secret itself names, and the SQL catalog's URL.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;

use super::children::{self, BuildError};
use super::error::{Error, Result};
use super::reconcile::Context;
use crate::crd::ImageCollection;

/// The annotation by which a Secret's owner names the one Milvus address its credentials may be
/// sent to. Without it the controller would be a confused deputy: anyone allowed to create an
/// ImageCollection, but not to read Secrets, could name any Secret of the namespace and an
/// address of their own, and receive the token from the controller or from the pods it creates.
pub const MILVUS_URI_ANNOTATION: &str = "imgsearch.io/milvus-uri";

/// The Secret `field` names, in the object's namespace.
async fn referenced_secret(
    context: &Context,
    ic: &ImageCollection,
    field: &'static str,
    secret: &str,
) -> Result<Secret> {
    let namespace = ic.namespace().ok_or(Error::NoNamespace)?;
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), &namespace);
    secrets.get_opt(secret).await?.ok_or_else(|| Error::Secret {
        field,
        name: secret.to_string(),
        problem: "not found".into(),
    })
}

/// The text values of a Secret in the object's namespace.
async fn secret_data(
    context: &Context,
    ic: &ImageCollection,
    field: &'static str,
    secret: &str,
) -> Result<BTreeMap<String, String>> {
    Ok(text_values(referenced_secret(context, ic, field, secret).await?))
}

fn text_values(secret: Secret) -> BTreeMap<String, String> {
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| (key, String::from_utf8_lossy(&value.0).trim().to_string()))
        .collect()
}

/// `token`, or `username` + `password`, from the referenced Secret.
pub(super) async fn milvus_token(context: &Context, ic: &ImageCollection, secret: &str) -> Result<String> {
    let field = "spec.milvus.secretRef";
    let uri = ic.milvus_uri().ok_or(BuildError::NoMilvus)?;
    let found = referenced_secret(context, ic, field, secret).await?;
    let bound_to = found.annotations().get(MILVUS_URI_ANNOTATION).map(|value| value.trim().to_string());
    if bound_to.as_deref() != Some(uri.as_str()) {
        let found = match bound_to {
            Some(other) => format!("it names {other}"),
            None => format!("it has no {MILVUS_URI_ANNOTATION} annotation"),
        };
        return Err(Error::SecretNotBound { name: secret.into(), uri, found });
    }
    let data = text_values(found);
    match (data.get("token"), data.get("username"), data.get("password")) {
        (Some(token), _, _) => Ok(token.clone()),
        (None, Some(user), Some(password)) => Ok(format!("{user}:{password}")),
        _ => Err(Error::Secret {
            field,
            name: secret.into(),
            problem: "needs a `token` key, or `username` and `password`".into(),
        }),
    }
}

/// The SQL catalog's URL from `spec.catalog.secretRef`, or `None` without one (no
/// `spec.catalog`, or a Secret that says "no SQL catalog").
pub(super) async fn catalog_url(ic: &ImageCollection, context: &Context) -> Result<Option<String>> {
    let Some(catalog) = &ic.spec.catalog else { return Ok(None) };
    let field = "spec.catalog.secretRef";
    let name = &catalog.secret_ref.name;
    let data = secret_data(context, ic, field, name).await?;
    let url = data.get(children::CATALOG_SECRET_KEY).ok_or_else(|| Error::Secret {
        field,
        name: name.clone(),
        problem: "has no DATABASE_URL key".into(),
    })?;
    Ok((!crate::catalog::names_no_database(url)).then(|| url.clone()))
}
