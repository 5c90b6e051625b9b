//! Kubernetes test support: a fake API server speaking the real protocol, and a simulated
//! kubelet that runs the pods it is asked for as local processes.
#![allow(dead_code)]

pub mod admission;
pub mod cronjob;
pub mod fake_apiserver;
pub mod kubelet;
