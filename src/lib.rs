//! imgsearch: reverse image search on Milvus.
//!
//! Data flows one way: source → ingest → (Milvus, catalog) ← serve. [`index`] is the one handle
//! every write goes through, in its order: [`ingest`]'s runs, and the uploads, deletes and drops
//! of [`search`], which also reads through it; [`api`] puts HTTP in front of the search service; [`controller`] makes the Kubernetes objects that run the other roles and never
//! touches pixels. [`cli`] maps flags onto each role's command; `main` runs it.
#![forbid(unsafe_code)]

pub mod api;
pub mod catalog;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod embed;
pub mod env;
pub mod eval;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod index;
pub mod ingest;
pub mod progress;
pub mod search;
pub mod shutdown;
pub mod source;
pub mod standalone;
pub mod store;
pub mod telemetry;
