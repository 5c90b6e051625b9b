//! imgsearch: reverse image search on Milvus.
//!
//! Data flows one way: source → ingest → (Milvus, catalog) ← serve.
#![forbid(unsafe_code)]

pub mod api;
pub mod catalog;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod embed;
pub mod eval;
pub mod ingest;
pub mod progress;
pub mod source;
pub mod standalone;
pub mod store;
pub mod telemetry;
