//! Kubernetes test support: a fake API server speaking the real protocol. It runs no pods.
//!
//! This is not where the operator is proven: that is the real control plane
//! (tests/control_plane, tests/operator_on_kubernetes.rs). The fake's job is what a real API
//! server will not do on demand: 409, 500, 429 and 503 per resource and verb, compacted watch
//! history and 410 Gone, refused lists and black holes. The scenarios here that the real
//! control plane now also runs move there step by step, and what only they needed of this
//! model goes with them (its simulated kubelet went with the end-to-end scenarios and the
//! RBAC check).
#![allow(dead_code)]

pub mod fake_apiserver;
