//! End-to-end tests that drive the real `atoll` binary.

mod controllers;
mod crash;
mod crd;
mod image;
mod rbac;
mod registry;
mod scheduler;
mod server;
mod up;
