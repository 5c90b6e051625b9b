//! The operator: turns an `ImageCollection` into a Milvus collection, ingest Jobs and a search
//! Deployment + Service. Child objects are built by pure functions in [`children`]; the
//! reconcile loop that applies them comes next (issue 4).

pub mod children;
