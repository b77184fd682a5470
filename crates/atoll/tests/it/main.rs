//! End-to-end tests that drive the real `atoll` binary.

mod controllers;
mod crash;
mod crd;
mod scheduler;
mod server;
