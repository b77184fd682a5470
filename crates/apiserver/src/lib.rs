//! The API server: Kubernetes' API over the store, with tenants above namespaces.
//!
//! So far: the generic [`registry`] (object semantics for every kind) and the built-in
//! [`kinds`]. The HTTP front (TLS, authentication, discovery, OpenAPI, watch encoding)
//! stacks on these.

pub mod actions;
pub mod authn;
pub mod authz;
pub mod compactor;
pub mod crd;
pub mod http;
pub mod jsonpath;
pub mod keystone;
pub mod kinds;
pub mod managed;
pub mod metrics;
pub mod nodeproxy;
pub mod openapi;
pub mod openapi_v2;
pub mod ownerrefs;
pub mod patch;
pub mod pki;
pub mod proto;
pub mod registry;
pub mod rv;
pub mod sandbox;
pub mod service_accounts;
pub mod table;
pub mod workloads;
