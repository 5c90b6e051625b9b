//! Kubernetes test support: a fake API server speaking the real protocol.
#![allow(dead_code)]

pub mod fake_apiserver;
