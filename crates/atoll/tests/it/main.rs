//! End-to-end tests that drive the real `atoll` binary.

mod controllers;
mod crash;
mod crd;
mod image;
mod rbac;
mod scheduler;
mod server;
mod up;
mod vm;
