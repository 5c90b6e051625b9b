//! The operator: turns an `ImageCollection` into a Milvus collection, ingest Jobs and a search
//! Deployment + Service. Child objects are built by pure functions in [`children`], status by
//! the pure [`status::compute`]; [`reconcile`] applies them.

pub mod children;
pub mod reconcile;
pub mod status;
