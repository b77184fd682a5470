//! Wire types and request machinery of Atoll's Kubernetes-compatible API. No I/O.
//!
//! - [`json`]: reading a JSON object by path ([`json::At`], a cheaper `Value::pointer`).
//! - [`meta`]: `ObjectMeta` (with Atoll's `tenant`), list metadata, field errors, `Status`.
//! - [`request`]: a request's URL and method, parsed once into a [`request::RequestInfo`].
//! - [`selector`]: label and field selectors.
//! - [`time`]: timestamps as Kubernetes writes them.
//! - [`vm`]: VM pods' `spec.virtualMachine`: defaults and qemu's overhead.

pub mod json;
pub mod meta;
pub mod quantity;
pub mod rbac;
pub mod request;
pub mod selector;
pub mod time;
pub mod vm;
