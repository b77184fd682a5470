//! The cluster's certificates: a CA generated on first start, the server's certificate,
//! and the administrator's client certificate and kubeconfig.
//!
//! Files under `<data-dir>/pki/`: `ca.crt`, `ca.key`, `server.crt`, `server.key`,
//! `admin.crt`, `admin.key` (keys mode 0600); `<data-dir>/admin.kubeconfig` is rewritten on
//! every start with the address the server listens on.
//!
//! Client certificate subjects carry the identity: `CN` is the user name, `O` a group,
//! `OU` the tenant. A certificate without exactly one `OU` names no tenant and is refused.
//! Every `O` is a group (as in Kubernetes). Certificates Atoll issues carry their first
//! group as `O` and any further groups in a non-critical extension ([`GROUPS_OID`], a DER
//! `SEQUENCE OF UTF8String`), because the certificate library writes one value per
//! attribute type; the groups of a certificate are the union of both.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate files in {dir}: {source}")]
    Io { dir: PathBuf, source: std::io::Error },
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The PEM files the server needs at run time.
pub struct Pki {
    pub ca_cert: String,
    pub server_cert: String,
    pub server_key: String,
    pub admin_cert: String,
    pub admin_key: String,
}

/// The administrator's identity: the `system` tenant's `system:masters` group.
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_GROUP: &str = "system:masters";

pub(crate) fn write_file(path: &Path, contents: &str, private: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

fn subject(cn: &str, org: Option<&str>, ou: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    if let Some(ou) = ou {
        dn.push(DnType::OrganizationalUnitName, ou);
    }
    dn
}

/// The extension holding a client certificate's groups beyond its `O` (an OID under a
/// private-enterprise arc; only certificates of the cluster's own CA are ever read).
pub const GROUPS_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 59_999, 1, 1];
/// How long the cluster's own certificates are valid.
const FOREVER: (i32, u8, u8) = (2036, 1, 1);

/// Issues a client certificate for `user` in `tenant` with `groups`, valid until
/// `not_after` (or [`FOREVER`]).
fn client_cert(
    issuer: &Issuer<'_, KeyPair>,
    user: &str,
    groups: &[String],
    tenant: &str,
    validity: Option<std::time::Duration>,
) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = subject(user, groups.first().map(String::as_str), Some(tenant));
    if groups.len() > 1 {
        params.custom_extensions.push(rcgen::CustomExtension::from_oid_content(GROUPS_OID, der_strings(&groups[1..])));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    match validity {
        Some(ttl) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
            let (y, m, d) = api::time::civil_from_days((now / 86_400) as i64);
            let midnight = rcgen::date_time_ymd(y as i32, m as u8, d as u8);
            let since_midnight = std::time::Duration::from_secs(now % 86_400);
            // A few minutes of slack for clocks that lag the control plane's.
            params.not_before = midnight + since_midnight.saturating_sub(std::time::Duration::from_secs(300));
            params.not_after = midnight + since_midnight + ttl;
        }
        None => params.not_after = rcgen::date_time_ymd(FOREVER.0, FOREVER.1, FOREVER.2),
    }
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// DER `SEQUENCE OF UTF8String`.
fn der_strings(items: &[String]) -> Vec<u8> {
    fn header(tag: u8, len: usize, out: &mut Vec<u8>) {
        out.push(tag);
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
    }
    let mut body = Vec::new();
    for item in items {
        header(0x0c, item.len(), &mut body);
        body.extend_from_slice(item.as_bytes());
    }
    let mut out = Vec::new();
    header(0x30, body.len(), &mut out);
    out.extend(body);
    out
}

/// Reads [`der_strings`]' encoding back; `None` for anything else.
fn parse_der_strings(der: &[u8]) -> Option<Vec<String>> {
    fn item(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (&t, rest) = input.split_first()?;
        if t != tag {
            return None;
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            (rest[..n].iter().fold(0usize, |acc, b| acc << 8 | *b as usize), &rest[n..])
        };
        (rest.len() >= len).then(|| rest.split_at(len))
    }
    let (mut body, rest) = item(der, 0x30)?;
    if !rest.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    while !body.is_empty() {
        let (value, rest) = item(body, 0x0c)?;
        out.push(String::from_utf8(value.to_vec()).ok()?);
        body = rest;
    }
    Some(out)
}

/// Loads the certificates in `data_dir`, creating them on first start. `hosts` are the
/// names and addresses the server certificate must be valid for.
pub fn bootstrap(data_dir: &Path, hosts: &[String]) -> Result<Pki, PkiError> {
    let dir = data_dir.join("pki");
    let io = |source| PkiError::Io { dir: dir.clone(), source };
    fs::create_dir_all(&dir).map_err(io)?;
    let names = ["ca.crt", "ca.key", "server.crt", "server.key", "admin.crt", "admin.key"];
    let present = names.iter().filter(|n| dir.join(n).exists()).count();
    if present == names.len() {
        let read = |n: &str| fs::read_to_string(dir.join(n)).map_err(io);
        return Ok(Pki {
            ca_cert: read("ca.crt")?,
            server_cert: read("server.crt")?,
            server_key: read("server.key")?,
            admin_cert: read("admin.crt")?,
            admin_key: read("admin.key")?,
        });
    }
    if present != 0 {
        return Err(PkiError::Invalid(format!(
            "{} holds only some of the cluster's certificate files; restore them or remove the directory",
            dir.display()
        )));
    }

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = subject("atoll-ca", None, None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca_params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server_params = CertificateParams::new(Vec::<String>::new())?;
    server_params.distinguished_name = subject("atoll-apiserver", None, None);
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    sans.extend(hosts.iter().cloned());
    sans.sort();
    sans.dedup();
    for h in &sans {
        server_params.subject_alt_names.push(match h.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(h.clone().try_into()?),
        });
    }
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let server_cert = server_params.signed_by(&server_key, &issuer)?;
    let (admin_cert, admin_key) =
        client_cert(&issuer, ADMIN_USER, &[ADMIN_GROUP.to_string()], api::request::SYSTEM_TENANT, None)?;

    let pki = Pki {
        ca_cert: ca_cert.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        admin_cert,
        admin_key,
    };
    // The CA first and last: a crash in between leaves a partial set, which the next start
    // reports instead of silently minting a second CA.
    write_file(&dir.join("server.crt"), &pki.server_cert, false).map_err(io)?;
    write_file(&dir.join("server.key"), &pki.server_key, true).map_err(io)?;
    write_file(&dir.join("admin.crt"), &pki.admin_cert, false).map_err(io)?;
    write_file(&dir.join("admin.key"), &pki.admin_key, true).map_err(io)?;
    write_file(&dir.join("ca.key"), &ca_key_pem, true).map_err(io)?;
    write_file(&dir.join("ca.crt"), &pki.ca_cert, false).map_err(io)?;
    Ok(pki)
}

/// Issues a client certificate from the CA in `data_dir`, valid for `ttl`, and returns a
/// kubeconfig for it. Runs on the control-plane machine (it reads the CA key).
pub fn issue_kubeconfig(
    data_dir: &Path,
    server: &str,
    user: &str,
    groups: &[String],
    tenant: &str,
    ttl: std::time::Duration,
) -> Result<String, PkiError> {
    if !api::request::is_dns_label(tenant) || tenant == api::request::ALL_TENANTS {
        return Err(PkiError::Invalid(format!("{tenant:?} is not a valid tenant name")));
    }
    if user.is_empty() {
        return Err(PkiError::Invalid("the user name is empty".into()));
    }
    if groups.iter().any(|g| g.is_empty()) {
        return Err(PkiError::Invalid("a group name is empty".into()));
    }
    // Past the CA's own end the certificate could not be verified anyway.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let ca_end = api::time::days_from_civil(FOREVER.0.into(), FOREVER.1.into(), FOREVER.2.into()) * 86_400;
    if now.saturating_add(ttl.as_secs()) > ca_end as u64 {
        return Err(PkiError::Invalid(format!(
            "a certificate valid for {}s would outlive the cluster CA ({})",
            ttl.as_secs(),
            api::time::rfc3339(ca_end)
        )));
    }
    let dir = data_dir.join("pki");
    let read = |n: &str| fs::read_to_string(dir.join(n)).map_err(|source| PkiError::Io { dir: dir.clone(), source });
    let ca_cert = read("ca.crt")?;
    let ca_key = KeyPair::from_pem(&read("ca.key")?)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key)?;
    let (cert, key) = client_cert(&issuer, user, groups, tenant, Some(ttl))?;
    Ok(kubeconfig(server, &ca_cert, &cert, &key, user, tenant))
}

/// The identity the API server presents to node agents (mutual TLS on their port).
pub const APISERVER_CLIENT_USER: &str = "system:apiserver";

fn load_issuer(data_dir: &Path) -> Result<(String, Issuer<'static, KeyPair>), PkiError> {
    let dir = data_dir.join("pki");
    let read = |n: &str| fs::read_to_string(dir.join(n)).map_err(|source| PkiError::Io { dir: dir.clone(), source });
    let ca_cert = read("ca.crt")?;
    let ca_key = KeyPair::from_pem(&read("ca.key")?)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key)?;
    Ok((ca_cert, issuer))
}

/// A certificate and key in PEM, with the CA that signed it.
pub struct Issued {
    pub ca_cert: String,
    pub cert: String,
    pub key: String,
}

/// Issues the client certificate the API server shows node agents (`CN=system:apiserver`,
/// tenant `system`, no group: it is not an administrator of the API). Made afresh at each
/// start from the CA in `data_dir`, so it never sits on disk.
pub fn issue_apiserver_client(data_dir: &Path) -> Result<Issued, PkiError> {
    let (ca_cert, issuer) = load_issuer(data_dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = subject(APISERVER_CLIENT_USER, None, Some(api::request::SYSTEM_TENANT));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued { ca_cert, cert: cert.pem(), key: key.serialize_pem() })
}

/// Issues a serving certificate for a node agent (`CN=system:node:<node>`) valid for
/// `hosts` (names or addresses), from the CA in `data_dir`.
pub fn issue_node_serving(data_dir: &Path, node: &str, hosts: &[String]) -> Result<Issued, PkiError> {
    let (ca_cert, issuer) = load_issuer(data_dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = subject(&format!("system:node:{node}"), Some("system:nodes"), None);
    let mut sans = hosts.to_vec();
    sans.sort();
    sans.dedup();
    for h in &sans {
        params.subject_alt_names.push(match h.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(h.clone().try_into()?),
        });
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued { ca_cert, cert: cert.pem(), key: key.serialize_pem() })
}

/// A kubeconfig for one identity; the context's name carries the tenant.
pub fn kubeconfig(server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str, user: &str, tenant: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let credentials =
        format!("    client-certificate-data: {}\n    client-key-data: {}\n", b64(cert_pem), b64(key_pem));
    kubeconfig_with(server, ca_pem, &credentials, user, tenant)
}

/// One of Atoll's own components, each with its own identity in the system tenant (see
/// `authz::bootstrap` for what each may do, `authz::node` for node agents).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Component {
    Controllers,
    Scheduler,
    /// The node agent of the named node.
    Node(String),
}

/// The controllers' user name, which is also their group.
pub const CONTROLLERS_USER: &str = "system:atoll-controllers";
/// The scheduler's user name, which is also its group.
pub const SCHEDULER_USER: &str = "system:kube-scheduler";

impl Component {
    /// Parses `controllers`, `scheduler` or `node:<name>`.
    pub fn parse(s: &str) -> Result<Component, PkiError> {
        match s {
            "controllers" => Ok(Component::Controllers),
            "scheduler" => Ok(Component::Scheduler),
            _ => match s.strip_prefix("node:") {
                // A node name is a DNS subdomain in Kubernetes; a label is what our paths
                // and the `system:node:` user name need at least.
                Some(n) if !n.is_empty() && n.split('.').all(api::request::is_dns_label) => {
                    Ok(Component::Node(n.to_string()))
                }
                _ => Err(PkiError::Invalid(format!(
                    "unknown component {s:?}: expected controllers, scheduler or node:<node name>"
                ))),
            },
        }
    }

    /// The identity's user name and group.
    pub fn identity(&self) -> (String, String) {
        match self {
            Component::Controllers => (CONTROLLERS_USER.into(), CONTROLLERS_USER.into()),
            Component::Scheduler => (SCHEDULER_USER.into(), SCHEDULER_USER.into()),
            Component::Node(n) => {
                (format!("{}{n}", crate::authz::node::NODE_USER_PREFIX), crate::authz::node::NODES_GROUP.into())
            }
        }
    }

    /// The kubeconfig file `atoll up` writes for it in the data directory.
    pub fn file_name(&self) -> String {
        match self {
            Component::Controllers => "controllers.kubeconfig".into(),
            Component::Scheduler => "scheduler.kubeconfig".into(),
            Component::Node(n) => format!("node-{n}.kubeconfig"),
        }
    }
}

/// How long a component's certificate lives: `atoll up` issues a fresh one at every start.
pub const COMPONENT_TTL: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// Issues a fresh client certificate for `component` from the CA in `data_dir` and writes
/// its kubeconfig (mode 0600) as `<data-dir>/<component file>`.
pub fn write_component_kubeconfig(data_dir: &Path, server: &str, component: &Component) -> Result<PathBuf, PkiError> {
    let (user, group) = component.identity();
    let text = issue_kubeconfig(data_dir, server, &user, &[group], api::request::SYSTEM_TENANT, COMPONENT_TTL)?;
    let path = data_dir.join(component.file_name());
    write_file(&path, &text, true).map_err(|source| PkiError::Io { dir: data_dir.to_path_buf(), source })?;
    Ok(path)
}

/// A kubeconfig whose user is `user_yaml` (the lines under `user:`, indented four spaces).
fn kubeconfig_with(server: &str, ca_pem: &str, user_yaml: &str, user: &str, tenant: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let context = format!("{user}@{tenant}");
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: atoll
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {context}
  user:
{user_yaml}contexts:
- name: {context}
  context:
    cluster: atoll
    user: {context}
current-context: {context}
",
        ca = b64(ca_pem),
    )
}

/// A kubeconfig that presents a bearer token; the context's name carries the tenant.
pub fn token_kubeconfig(server: &str, ca_pem: &str, token: &str, user: &str, tenant: &str) -> String {
    kubeconfig_with(server, ca_pem, &format!("    token: {token}\n"), user, tenant)
}

/// A kubeconfig whose credentials come from a kubectl credential plugin: `command` with
/// `args` (`atoll login ...`).
pub fn exec_kubeconfig(server: &str, ca_pem: &str, command: &str, args: &[String], user: &str, tenant: &str) -> String {
    let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let mut lines = String::from("    exec:\n      apiVersion: client.authentication.k8s.io/v1\n");
    lines.push_str(&format!("      command: {}\n      args:\n", quote(command)));
    for a in args {
        lines.push_str(&format!("      - {}\n", quote(a)));
    }
    lines.push_str("      interactiveMode: IfAvailable\n      provideClusterInfo: false\n");
    kubeconfig_with(server, ca_pem, &lines, user, tenant)
}

/// Writes `<data-dir>/admin.kubeconfig` for the server at `server` (an https URL).
pub fn write_admin_kubeconfig(data_dir: &Path, pki: &Pki, server: &str) -> Result<PathBuf, PkiError> {
    let path = data_dir.join("admin.kubeconfig");
    let text =
        kubeconfig(server, &pki.ca_cert, &pki.admin_cert, &pki.admin_key, ADMIN_USER, api::request::SYSTEM_TENANT);
    write_file(&path, &text, true).map_err(|source| PkiError::Io { dir: data_dir.to_path_buf(), source })?;
    Ok(path)
}

/// The identity a verified client certificate carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertIdentity {
    pub user: String,
    pub groups: Vec<String>,
    pub tenant: String,
}

/// Reads the identity from a client certificate (already verified against the CA).
pub fn identity_from_cert(der: &[u8]) -> Result<CertIdentity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Invalid(format!("unreadable client certificate: {e}")))?;
    let subject = cert.subject();
    let text = |attr: &x509_parser::x509::AttributeTypeAndValue| attr.as_str().map(str::to_string).ok();
    let cns: Vec<String> = subject.iter_common_name().filter_map(text).collect();
    let mut groups: Vec<String> = subject.iter_organization().filter_map(text).collect();
    let groups_oid = x509_parser::der_parser::oid::Oid::from(GROUPS_OID)
        .map_err(|_| PkiError::Invalid("the groups extension's OID".into()))?;
    for ext in cert.extensions().iter().filter(|e| e.oid == groups_oid) {
        let more = parse_der_strings(ext.value)
            .ok_or_else(|| PkiError::Invalid("the certificate's groups extension is malformed".into()))?;
        for g in more {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    let tenants: Vec<String> = subject.iter_organizational_unit().filter_map(text).collect();
    let [user] = cns.as_slice() else {
        return Err(PkiError::Invalid("a client certificate needs exactly one CN (the user)".into()));
    };
    let [tenant] = tenants.as_slice() else {
        return Err(PkiError::Invalid("a client certificate needs exactly one OU (the tenant)".into()));
    };
    if !api::request::is_dns_label(tenant) || tenant == api::request::ALL_TENANTS {
        return Err(PkiError::Invalid(format!("the certificate's tenant {tenant:?} is not a valid tenant name")));
    }
    Ok(CertIdentity { user: user.clone(), groups, tenant: tenant.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_creates_once_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let first = bootstrap(dir.path(), &["atoll.example".into()]).unwrap();
        let again = bootstrap(dir.path(), &[]).unwrap();
        assert_eq!(first.ca_cert, again.ca_cert);
        assert_eq!(first.admin_key, again.admin_key);
        let mode = fs::metadata(dir.path().join("pki/ca.key")).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        let der = pem_to_der(&first.admin_cert);
        let id = identity_from_cert(&der).unwrap();
        assert_eq!(
            id,
            CertIdentity { user: "admin".into(), groups: vec!["system:masters".into()], tenant: "system".into() }
        );
        fs::remove_file(dir.path().join("pki/ca.crt")).unwrap();
        assert!(matches!(bootstrap(dir.path(), &[]), Err(PkiError::Invalid(_))), "a partial set is reported");
    }

    fn pem_to_der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD.decode(body).unwrap()
    }

    #[test]
    fn issued_certificates_carry_every_group_and_end_after_their_ttl() {
        let dir = tempfile::tempdir().unwrap();
        bootstrap(dir.path(), &[]).unwrap();
        let groups: Vec<String> = ["devs", "keystone:member", &"g".repeat(200)].iter().map(|g| g.to_string()).collect();
        let ttl = std::time::Duration::from_secs(1800);
        let config = issue_kubeconfig(dir.path(), "https://127.0.0.1:1", "bob", &groups, "acme", ttl).unwrap();
        assert!(config.contains("current-context: bob@acme"));
        let cert_b64 = config.lines().find_map(|l| l.trim().strip_prefix("client-certificate-data: ")).unwrap();
        let pem = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(cert_b64).unwrap()).unwrap();
        let der = pem_to_der(&pem);
        let id = identity_from_cert(&der).unwrap();
        assert_eq!(id, CertIdentity { user: "bob".into(), groups: groups.clone(), tenant: "acme".into() });
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let end = cert.validity().not_after.timestamp();
        assert!((end - now - 1800).abs() <= 5, "not after {end}, now {now}");
        assert!(cert.validity().not_before.timestamp() <= now);
        // No groups: no O at all (the server adds system:authenticated itself).
        let config = issue_kubeconfig(dir.path(), "https://127.0.0.1:1", "eve", &[], "acme", ttl).unwrap();
        assert!(config.contains("eve@acme"));
        let long = std::time::Duration::from_secs(100 * 365 * 86_400);
        assert!(matches!(issue_kubeconfig(dir.path(), "s", "bob", &[], "acme", long), Err(PkiError::Invalid(_))));
        assert!(matches!(
            issue_kubeconfig(dir.path(), "s", "bob", &["".into()], "acme", ttl),
            Err(PkiError::Invalid(_))
        ));
    }

    #[test]
    fn group_lists_round_trip_through_der() {
        let items: Vec<String> = vec!["a".into(), "é".into(), "x".repeat(300)];
        assert_eq!(parse_der_strings(&der_strings(&items)), Some(items));
        assert_eq!(parse_der_strings(&der_strings(&[])), Some(vec![]));
        for bad in
            [&[][..], &[0x30], &[0x30, 0x05, 0x0c], &[0x31, 0x00], &[0x30, 0x02, 0x04, 0x00], &[0x30, 0x00, 0x00]]
        {
            assert_eq!(parse_der_strings(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn component_identities() {
        let dir = tempfile::tempdir().unwrap();
        bootstrap(dir.path(), &[]).unwrap();
        assert!(Component::parse("node:").is_err());
        assert!(Component::parse("node:a/b").is_err());
        assert!(Component::parse("admin").is_err());
        for (spec, user, group) in [
            ("controllers", "system:atoll-controllers", "system:atoll-controllers"),
            ("scheduler", "system:kube-scheduler", "system:kube-scheduler"),
            ("node:n1.example", "system:node:n1.example", "system:nodes"),
        ] {
            let c = Component::parse(spec).unwrap();
            let path = write_component_kubeconfig(dir.path(), "https://127.0.0.1:1", &c).unwrap();
            let text = fs::read_to_string(&path).unwrap();
            let cert = text.lines().find_map(|l| l.trim().strip_prefix("client-certificate-data: ")).unwrap();
            let pem = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(cert).unwrap()).unwrap();
            let id = identity_from_cert(&pem_to_der(&pem)).unwrap();
            assert_eq!(id, CertIdentity { user: user.into(), groups: vec![group.into()], tenant: "system".into() });
            let mode = fs::metadata(&path).unwrap().permissions();
            assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        }
    }

    #[test]
    fn kubeconfig_names_the_tenant_in_its_context() {
        let k = kubeconfig("https://127.0.0.1:6443", "ca", "cert", "key", "alice", "acme");
        assert!(k.contains("current-context: alice@acme"));
        assert!(k.contains("server: https://127.0.0.1:6443"));
    }
}
