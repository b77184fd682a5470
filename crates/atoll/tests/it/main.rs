//! End-to-end tests that drive the real `atoll` binary.

mod crash;
mod crd;
mod rbac;
mod server;
