//! Names of the RBAC objects the auth-controller makes, shared with the API server, whose
//! bootstrap lets the controllers bind exactly these roles and no other.

/// The per-tenant ClusterRole every User is bound to (namespaces of its tenant, networks).
pub const TENANT_USER_ROLE: &str = "atoll:tenant-user";
/// The Role (and its RoleBinding) that gives a namespace's creator every verb in it.
pub const NAMESPACE_OWNER: &str = "atoll:namespace-owner";
