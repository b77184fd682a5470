//! End-to-end tests that drive the real `atoll` binary.

mod actions;
mod admission;
mod authn;
mod compaction;
mod controllers;
mod crash;
mod crd;
mod image;
mod isolation;
mod keystone;
mod leastpriv;
mod nodes;
mod rbac;
mod registry;
mod sandbox;
mod scheduler;
mod server;
mod streaming;
mod up;
mod vm;
mod workloads;
