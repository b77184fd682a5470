//! The cluster's certificates: a CA generated on first start, the server's certificate,
//! and the administrator's client certificate and kubeconfig.
//!
//! Files under `<data-dir>/pki/`: `ca.crt`, `ca.key`, `server.crt`, `server.key`,
//! `admin.crt`, `admin.key` (keys mode 0600); `<data-dir>/admin.kubeconfig` is rewritten on
//! every start with the address the server listens on.
//!
//! Client certificate subjects carry the identity: `CN` is the user name, `O` a group,
//! `OU` the tenant. A certificate without exactly one `OU` names no tenant and is refused.

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

/// Issues a client certificate for `user` in `tenant` with one `group`.
fn client_cert(
    issuer: &Issuer<'_, KeyPair>,
    user: &str,
    group: &str,
    tenant: &str,
) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = subject(user, Some(group), Some(tenant));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
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
    let (admin_cert, admin_key) = client_cert(&issuer, ADMIN_USER, ADMIN_GROUP, api::request::SYSTEM_TENANT)?;

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

/// Issues a client certificate from the CA in `data_dir` and returns a kubeconfig for it.
/// Runs on the control-plane machine (it reads the CA key).
pub fn issue_kubeconfig(
    data_dir: &Path,
    server: &str,
    user: &str,
    group: &str,
    tenant: &str,
) -> Result<String, PkiError> {
    if !api::request::is_dns_label(tenant) || tenant == api::request::ALL_TENANTS {
        return Err(PkiError::Invalid(format!("{tenant:?} is not a valid tenant name")));
    }
    if user.is_empty() {
        return Err(PkiError::Invalid("the user name is empty".into()));
    }
    let dir = data_dir.join("pki");
    let read = |n: &str| fs::read_to_string(dir.join(n)).map_err(|source| PkiError::Io { dir: dir.clone(), source });
    let ca_cert = read("ca.crt")?;
    let ca_key = KeyPair::from_pem(&read("ca.key")?)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key)?;
    let (cert, key) = client_cert(&issuer, user, group, tenant)?;
    Ok(kubeconfig(server, &ca_cert, &cert, &key, user, tenant))
}

/// A kubeconfig for one identity; the context's name carries the tenant.
pub fn kubeconfig(server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str, user: &str, tenant: &str) -> String {
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
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: {context}
  context:
    cluster: atoll
    user: {context}
current-context: {context}
",
        ca = b64(ca_pem),
        cert = b64(cert_pem),
        key = b64(key_pem),
    )
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
    let groups: Vec<String> = subject.iter_organization().filter_map(text).collect();
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
    fn kubeconfig_names_the_tenant_in_its_context() {
        let k = kubeconfig("https://127.0.0.1:6443", "ca", "cert", "key", "alice", "acme");
        assert!(k.contains("current-context: alice@acme"));
        assert!(k.contains("server: https://127.0.0.1:6443"));
    }
}
