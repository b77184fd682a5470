//! Kubeconfig files, as `atoll admin kubeconfig` writes them and as kubectl users keep them:
//! inline `*-data` fields or file paths (relative to the file's folder, as kubectl resolves
//! them), the current context or a named one.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the kubeconfig is not valid YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("the kubeconfig has no context {0:?}")]
    NoContext(String),
    #[error("the kubeconfig names no current context")]
    NoCurrentContext,
    #[error("the kubeconfig has no cluster {0:?}")]
    NoCluster(String),
    #[error("the kubeconfig has no user {0:?}")]
    NoUser(String),
    #[error("{field} is not valid base64: {source}")]
    Base64 { field: &'static str, source: base64::DecodeError },
    #[error("invalid server URL {url:?}: {why}")]
    Server { url: String, why: &'static str },
    #[error("the cluster has no certificate authority (certificate-authority or certificate-authority-data)")]
    NoCa,
    #[error("{0} is given without {1}")]
    Half(&'static str, &'static str),
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct File {
    #[serde(default)]
    clusters: Vec<Named<ClusterEntry>>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<Named<ContextEntry>>,
    #[serde(default)]
    current_context: Option<String>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(flatten)]
    value: T,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: UserEntry,
}

#[derive(Deserialize)]
struct ClusterEntry {
    cluster: Cluster,
}

#[derive(Deserialize)]
struct ContextEntry {
    context: Context,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    tls_server_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct UserEntry {
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
    token: Option<String>,
    token_file: Option<String>,
}

#[derive(Deserialize, Default)]
struct Context {
    cluster: String,
    user: String,
    namespace: Option<String>,
}

/// Where the API server is: `https://host:port` plus an optional path prefix such as
/// `/tenants/acme`, which every request path keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerUrl {
    /// Host as written (brackets removed from IPv6 addresses).
    pub host: String,
    pub port: u16,
    /// Empty, or starting with `/` and without a trailing `/`.
    pub prefix: String,
}

impl ServerUrl {
    /// `host:port`, with an IPv6 address in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn parse(url: &str) -> Result<ServerUrl, KubeconfigError> {
        let bad = |why| KubeconfigError::Server { url: url.to_string(), why };
        let rest = url.strip_prefix("https://").ok_or_else(|| bad("only https:// servers are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad("user information in the URL is not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '[' in the host"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("the port is not a number"))?,
            None => 443,
        };
        if path.contains(['?', '#']) {
            return Err(bad("a query or fragment is not allowed"));
        }
        Ok(ServerUrl { host: host.to_string(), port, prefix: path.trim_end_matches('/').to_string() })
    }
}

/// Everything the client needs to reach and authenticate to one API server.
#[derive(Clone)]
pub struct Config {
    pub server: ServerUrl,
    /// PEM certificates the server's certificate must chain to.
    pub ca_pem: Vec<u8>,
    /// PEM client certificate (chain) and key: the identity for certificate authentication.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    pub token: Option<String>,
    /// Name to verify the server's certificate against, if not the URL's host.
    pub tls_server_name: Option<String>,
    /// The context's default namespace.
    pub namespace: Option<String>,
    /// What requests say they come from (`User-Agent`; the server names a write's field
    /// manager after its product, the part before `/`, as Kubernetes does).
    pub user_agent: String,
}

/// The `User-Agent` of a client that does not name itself: `atoll/<version>`.
pub fn default_user_agent() -> String {
    format!("atoll/{}", env!("CARGO_PKG_VERSION"))
}

impl Config {
    /// The same configuration for a client that introduces itself as `product` (e.g.
    /// `atoll-scheduler`): its writes are recorded as that field manager.
    pub fn named(mut self, product: &str) -> Config {
        self.user_agent = format!("{product}/{}", env!("CARGO_PKG_VERSION"));
        self
    }
}

impl std::fmt::Debug for Config {
    // Keys and tokens stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("server", &self.server)
            .field("identity", &self.identity.is_some())
            .field("token", &self.token.is_some())
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl Config {
    /// Loads a kubeconfig file with its current context (or `context`).
    pub fn from_kubeconfig(path: &Path, context: Option<&str>) -> Result<Config, KubeconfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KubeconfigError::Read { path: path.to_path_buf(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_kubeconfig_str(&text, base, context)
    }

    /// Parses a kubeconfig's text; relative file names are taken from `base`.
    pub fn from_kubeconfig_str(text: &str, base: &Path, context: Option<&str>) -> Result<Config, KubeconfigError> {
        let file: File = serde_yaml_ng::from_str(text)?;
        let context_name = match context {
            Some(c) => c.to_string(),
            None => file.current_context.clone().filter(|c| !c.is_empty()).ok_or(KubeconfigError::NoCurrentContext)?,
        };
        let ctx = &file
            .contexts
            .iter()
            .find(|c| c.name == context_name)
            .ok_or_else(|| KubeconfigError::NoContext(context_name.clone()))?
            .value
            .context;
        let cluster = &file
            .clusters
            .iter()
            .find(|c| c.name == ctx.cluster)
            .ok_or_else(|| KubeconfigError::NoCluster(ctx.cluster.clone()))?
            .value
            .cluster;
        let user = &file
            .users
            .iter()
            .find(|u| u.name == ctx.user)
            .ok_or_else(|| KubeconfigError::NoUser(ctx.user.clone()))?
            .user;
        let read = |file: &str| {
            let path = base.join(file);
            std::fs::read(&path).map_err(|source| KubeconfigError::Read { path, source })
        };
        let decode = |field: &'static str, data: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|source| KubeconfigError::Base64 { field, source })
        };
        // Inline data wins over a file name, as in kubectl.
        let either =
            |field: &'static str, data: &Option<String>, file: &Option<String>| -> Result<_, KubeconfigError> {
                match (data, file) {
                    (Some(d), _) if !d.is_empty() => Ok(Some(decode(field, d)?)),
                    (_, Some(f)) if !f.is_empty() => Ok(Some(read(f)?)),
                    _ => Ok(None),
                }
            };
        let ca_pem =
            either("certificate-authority-data", &cluster.certificate_authority_data, &cluster.certificate_authority)?
                .ok_or(KubeconfigError::NoCa)?;
        let cert = either("client-certificate-data", &user.client_certificate_data, &user.client_certificate)?;
        let key = either("client-key-data", &user.client_key_data, &user.client_key)?;
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => return Err(KubeconfigError::Half("a client certificate", "its key")),
            (None, Some(_)) => return Err(KubeconfigError::Half("a client key", "its certificate")),
        };
        let token = match (&user.token, &user.token_file) {
            (Some(t), _) if !t.is_empty() => Some(t.clone()),
            (_, Some(f)) if !f.is_empty() => Some(String::from_utf8_lossy(&read(f)?).trim().to_string()),
            _ => None,
        };
        Ok(Config {
            server: ServerUrl::parse(&cluster.server)?,
            ca_pem,
            identity,
            token,
            tls_server_name: cluster.tls_server_name.clone().filter(|s| !s.is_empty()),
            namespace: ctx.namespace.clone().filter(|s| !s.is_empty()),
            user_agent: default_user_agent(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        let p = |u: &str| ServerUrl::parse(u).map(|s| (s.host, s.port, s.prefix)).map_err(|e| e.to_string());
        assert_eq!(p("https://127.0.0.1:6443"), Ok(("127.0.0.1".into(), 6443, "".into())));
        assert_eq!(p("https://h.example/"), Ok(("h.example".into(), 443, "".into())));
        assert_eq!(p("https://[::1]:8443/tenants/acme/"), Ok(("::1".into(), 8443, "/tenants/acme".into())));
        assert_eq!(ServerUrl::parse("https://[::1]:8443").unwrap().authority(), "[::1]:8443");
        assert_eq!(ServerUrl::parse("https://h:1").unwrap().authority(), "h:1");
        assert!(p("http://127.0.0.1:80").unwrap_err().contains("only https"));
        assert!(p("https://h:x").unwrap_err().contains("port"));
        assert!(p("https://:1").unwrap_err().contains("no host"));
        assert!(p("https://h/a?b").is_err());
    }

    const INLINE: &str = "apiVersion: v1
kind: Config
clusters:
- name: atoll
  cluster:
    server: https://127.0.0.1:6443/tenants/acme
    certificate-authority-data: Y2E=
users:
- name: alice@acme
  user:
    client-certificate-data: Y2VydA==
    client-key-data: a2V5
- name: bob
  user:
    client-certificate: certs/bob.crt
    client-key: /nonexistent/bob.key
contexts:
- name: alice@acme
  context:
    cluster: atoll
    user: alice@acme
    namespace: web
- name: bob
  context: {cluster: atoll, user: bob}
current-context: alice@acme
";

    #[test]
    fn inline_data_and_the_current_context() {
        let c = Config::from_kubeconfig_str(INLINE, Path::new("/"), None).unwrap();
        assert_eq!(c.server.prefix, "/tenants/acme");
        assert_eq!(c.ca_pem, b"ca");
        assert_eq!(c.identity, Some((b"cert".to_vec(), b"key".to_vec())));
        assert_eq!(c.namespace.as_deref(), Some("web"));
        let missing = Config::from_kubeconfig_str(INLINE, Path::new("/"), Some("carol")).err().unwrap();
        assert_eq!(missing.to_string(), "the kubeconfig has no context \"carol\"");
    }

    #[test]
    fn file_paths_are_relative_to_the_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        std::fs::write(dir.path().join("certs/bob.crt"), "bob-cert").unwrap();
        let err = Config::from_kubeconfig_str(INLINE, dir.path(), Some("bob")).err().unwrap();
        assert!(err.to_string().starts_with("reading /nonexistent/bob.key"), "{err}");
        let fixed = INLINE.replace("/nonexistent/bob.key", "certs/bob.crt");
        let c = Config::from_kubeconfig_str(&fixed, dir.path(), Some("bob")).unwrap();
        assert_eq!(c.identity, Some((b"bob-cert".to_vec(), b"bob-cert".to_vec())));
        assert!(matches!(Config::from_kubeconfig_str("clusters: [", dir.path(), None), Err(KubeconfigError::Yaml(_))));
    }
}
