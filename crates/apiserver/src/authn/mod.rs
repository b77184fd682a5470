//! Authentication: who is calling, as user name, groups and tenant.
//!
//! One chain, evaluated per request ([`Authenticator::authenticate`]), first match wins:
//! 1. the connection's client certificate, verified against the cluster CA during the TLS
//!    handshake (`CN` user, `O` groups, `OU` tenant; `pki.rs`);
//! 2. `Authorization: Bearer`: a token this cluster signed ([`token`]): a service
//!    account's (valid while that very ServiceAccount, by uid, exists) or a user's (one
//!    issued to a User object dies with it; one minted by the operator carries its groups);
//! 3. `Authorization: Basic`: a User's password, user name `TENANT/NAME` (or `NAME` with the
//!    tenant named by the URL, `/tenants/TENANT/...`), throttled per user and source.
//!
//! A credential that is presented but not valid is a 401: it never falls through to
//! another authenticator or to anonymity. No credential at all is anonymous, which the
//! caller refuses (only health and version answer without one).
//!
//! The views of ServiceAccounts and Users that tokens and passwords are checked against
//! are in memory, fed by store watches ([`directory`]): no store read per request.

// Errors here are `Status` values on their way to the client, as in `http.rs`.
#![allow(clippy::result_large_err)]

pub mod directory;
pub mod password;
pub mod token;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::meta::Status;
use base64::Engine;
use store::Store;

use self::directory::Directory;
use self::token::{Claims, Subject, TokenKey};
use crate::http::User;
use crate::pki;

#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    #[error(transparent)]
    Token(#[from] token::TokenError),
    #[error("loading service accounts and users: {0}")]
    Store(#[from] store::StoreError),
    #[error("{0}")]
    Invalid(String),
}

/// How a caller proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Certificate,
    ServiceAccountToken,
    UserToken,
    Password,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    pub user: User,
    pub method: Method,
}

/// What a connection's TLS handshake established.
#[derive(Clone, Debug)]
pub enum ConnectionCert {
    None,
    Valid(User),
    /// Signed by the CA but naming no valid identity (no tenant, say).
    Invalid,
}

impl ConnectionCert {
    /// Reads the identity of the connection's first (verified) client certificate.
    pub fn of(certs: Option<&[rustls::pki_types::CertificateDer<'_>]>, peer: std::net::SocketAddr) -> ConnectionCert {
        let Some(der) = certs.and_then(|c| c.first()) else { return ConnectionCert::None };
        match pki::identity_from_cert(der) {
            Ok(id) => ConnectionCert::Valid(User::from(id)),
            Err(e) => {
                tracing::info!(%peer, error = %e, "refusing a client certificate");
                ConnectionCert::Invalid
            }
        }
    }
}

/// A refused credential: the status to answer, and how long to wait before trying again
/// (for `Retry-After`), when throttled.
#[derive(Debug)]
pub struct Refused {
    pub status: Status,
    pub retry_after: Option<Duration>,
    /// The credential is not one of Atoll's own (a bearer token that is no JWT, basic
    /// credentials naming no User): an external identity provider (Keystone) may know it.
    pub not_ours: bool,
    /// For basic credentials handed to Keystone: the throttle's name for them (`tenant/user`),
    /// under which the caller records Keystone's verdict ([`Authenticator::external_verdict`]).
    pub throttled_as: Option<String>,
}

impl Refused {
    fn unauthorized() -> Refused {
        Refused { status: Status::unauthorized(), retry_after: None, not_ours: false, throttled_as: None }
    }

    fn not_ours() -> Refused {
        Refused { not_ours: true, ..Refused::unauthorized() }
    }
}

pub struct Authenticator {
    key: TokenKey,
    directory: Arc<Directory>,
    throttle: password::Throttle,
    /// An external identity provider (Keystone) is configured: credentials that are not
    /// Atoll's own are handed to it rather than refused here.
    pub external: bool,
}

const AUTHENTICATED: &str = "system:authenticated";

fn with_authenticated(mut groups: Vec<String>) -> Vec<String> {
    if !groups.iter().any(|g| g == AUTHENTICATED) {
        groups.push(AUTHENTICATED.into());
    }
    groups
}

impl Authenticator {
    /// Loads (or makes, at first start) the token key in `data_dir` and the views of
    /// ServiceAccounts and Users in `store`.
    pub async fn start(store: Arc<dyn Store>, data_dir: &Path) -> Result<Authenticator, AuthnError> {
        let key = TokenKey::load_or_create(data_dir)?;
        let directory = Directory::start(store).await?;
        Ok(Authenticator { key, directory, throttle: password::Throttle::default(), external: false })
    }

    pub fn key(&self) -> &TokenKey {
        &self.key
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The caller of one request, or `None` if it presented no credential at all.
    pub async fn authenticate(
        &self,
        cert: &ConnectionCert,
        authorization: Option<&str>,
        path: &str,
        peer: IpAddr,
    ) -> Result<Option<Authenticated>, Refused> {
        match cert {
            ConnectionCert::Valid(user) => {
                return Ok(Some(Authenticated { user: user.clone(), method: Method::Certificate }));
            }
            ConnectionCert::Invalid => return Err(Refused::unauthorized()),
            ConnectionCert::None => {}
        }
        let Some(header) = authorization else { return Ok(None) };
        let (scheme, credential) = header.trim().split_once(' ').unwrap_or((header, ""));
        let credential = credential.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            if TokenKey::looks_like_jwt(credential) {
                return self.bearer(credential).map(Some).ok_or_else(Refused::unauthorized);
            }
            // Not a token of ours: the API server asks Keystone, when one is configured.
            return Err(Refused::not_ours());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            return self.basic(credential, path, peer).await.map(Some);
        }
        Err(Refused::unauthorized())
    }

    /// A token this cluster signed, whose subject still exists.
    fn bearer(&self, token: &str) -> Option<Authenticated> {
        let claims = self.key.verify(token, token::now()).ok()?;
        let tenant = claims.atoll.tenant.clone();
        if !api::request::is_dns_label(&tenant) || tenant == api::request::ALL_TENANTS {
            return None;
        }
        match claims.atoll.subject {
            Subject::ServiceAccount => {
                let k = claims.kubernetes.as_ref()?;
                let uid = self.directory.account_uid(&tenant, &k.namespace, &k.serviceaccount.name)?;
                if uid != k.serviceaccount.uid || k.serviceaccount.uid.is_empty() {
                    return None;
                }
                let groups = vec![
                    "system:serviceaccounts".to_string(),
                    format!("system:serviceaccounts:{}", k.namespace),
                    AUTHENTICATED.to_string(),
                ];
                let name = format!("system:serviceaccount:{}:{}", k.namespace, k.serviceaccount.name);
                Some(Authenticated { user: User { name, groups, tenant }, method: Method::ServiceAccountToken })
            }
            Subject::User => {
                let groups = match &claims.atoll.user_uid {
                    // Issued to a User object: only while that object lives, with its groups now.
                    Some(uid) => {
                        let record = self.directory.user(&tenant, &claims.sub)?;
                        if record.uid != *uid {
                            return None;
                        }
                        record.groups
                    }
                    None => claims.atoll.groups.clone(),
                };
                let user = User { name: claims.sub.clone(), groups: with_authenticated(groups), tenant };
                Some(Authenticated { user, method: Method::UserToken })
            }
        }
    }

    /// HTTP basic credentials against a User's password.
    async fn basic(&self, credential: &str, path: &str, peer: IpAddr) -> Result<Authenticated, Refused> {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credential)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(Refused::unauthorized)?;
        let (login, secret) = decoded.split_once(':').ok_or_else(Refused::unauthorized)?;
        let (tenant, name) = match login.split_once('/') {
            Some((t, n)) => (t.to_string(), n.to_string()),
            None => (url_tenant(path).ok_or_else(Refused::unauthorized)?, login.to_string()),
        };
        if !api::request::is_dns_label(&tenant) || tenant == api::request::ALL_TENANTS || name.is_empty() {
            return Err(Refused::unauthorized());
        }
        let who = format!("{tenant}/{name}");
        if let Err(wait) = self.throttle.check(&who, peer, Instant::now()) {
            return Err(too_many(wait));
        }
        let record = self.directory.user(&tenant, &name);
        if record.is_none() && self.external {
            // Credentials that name no Atoll User go to Keystone (the API server asks it).
            // They were throttled above like any other, and Keystone's verdict counts as ours would.
            return Err(Refused { throttled_as: Some(who), ..Refused::not_ours() });
        }
        let hash = record.as_ref().and_then(|r| r.password_hash.clone());
        let secret = secret.to_string();
        // The same work whether or not the user exists (a decoy hash), off the async threads.
        let ok = tokio::task::spawn_blocking(move || match hash {
            Some(h) => password::verify(&secret, &h),
            None => {
                password::verify(&secret, password::decoy_hash());
                false
            }
        })
        .await
        .unwrap_or(false);
        match record {
            Some(r) if ok => {
                self.throttle.succeeded(&who, peer);
                let user = User { name, groups: with_authenticated(r.groups), tenant };
                Ok(Authenticated { user, method: Method::Password })
            }
            _ => {
                self.throttle.failed(&who, peer, Instant::now());
                tracing::info!(%peer, tenant, "a password login failed");
                Err(Refused::unauthorized())
            }
        }
    }

    /// Records an external provider's verdict on basic credentials Atoll handed to it
    /// (`who` from [`Refused::throttled_as`]): a refusal is a failed login like a wrong
    /// password of a User, so guessing through Keystone is throttled the same; an acceptance
    /// clears the failures.
    pub fn external_verdict(&self, who: &str, peer: IpAddr, accepted: bool) {
        if accepted {
            self.throttle.succeeded(who, peer);
        } else {
            self.throttle.failed(who, peer, Instant::now());
            tracing::info!(%peer, who, "an external password login failed");
        }
    }

    /// A short-lived token for a User who just proved its password (`atoll login`).
    pub fn login_token(&self, user: &User, ttl: i64) -> Result<(String, i64), Status> {
        let record = self
            .directory
            .user(&user.tenant, &user.name)
            .ok_or_else(|| Status::failure(403, "Forbidden", "only a User may log in"))?;
        let now = token::now();
        let claims = Claims::user(&user.tenant, &user.name, Vec::new(), Some(record.uid), now, ttl);
        let token = self.key.sign(&claims).map_err(|e| Status::internal(e.to_string()))?;
        Ok((token, now + ttl))
    }
}

/// A kubeconfig with a user token for `user` of `tenant` in `group`, valid `ttl` seconds,
/// signed with the key in `data_dir` (`atoll admin kubeconfig --token`, on the control-plane
/// machine). Such a token names no User object: like a certificate, it is valid until it
/// expires.
pub fn issue_token_kubeconfig(
    data_dir: &Path,
    server: &str,
    user: &str,
    groups: &[String],
    tenant: &str,
    ttl: i64,
) -> Result<String, AuthnError> {
    if !api::request::is_dns_label(tenant) || tenant == api::request::ALL_TENANTS || user.is_empty() {
        return Err(AuthnError::Invalid(format!("{user:?} of {tenant:?} is not a valid user of a valid tenant")));
    }
    let ca = std::fs::read_to_string(data_dir.join("pki/ca.crt"))
        .map_err(|e| AuthnError::Invalid(format!("reading the cluster CA: {e}")))?;
    let key = TokenKey::load_or_create(data_dir)?;
    let claims = Claims::user(tenant, user, groups.to_vec(), None, token::now(), ttl);
    Ok(pki::token_kubeconfig(server, &ca, &key.sign(&claims)?, user, tenant))
}

fn too_many(wait: Duration) -> Refused {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut status = Status::failure(429, "TooManyRequests", "too many failed logins; try again later");
    status.details = Some(api::meta::StatusDetails { retry_after_seconds: Some(secs as u32), ..Default::default() });
    Refused { status, retry_after: Some(Duration::from_secs(secs)), not_ours: false, throttled_as: None }
}

/// The tenant a URL names (`/tenants/T/...` or a tenant path), if any.
fn url_tenant(path: &str) -> Option<String> {
    match api::request::parse("GET", path, None).ok()? {
        api::request::RequestInfo::Resource(r) => match r.tenant {
            api::request::TenantScope::Named(t) => Some(t),
            _ => None,
        },
        api::request::RequestInfo::NonResource { tenant: api::request::TenantScope::Named(t), .. } => Some(t),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn account(tenant: &str, ns: &str, name: &str, uid: &str) -> Bytes {
        let obj = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"tenant": tenant, "namespace": ns, "name": name, "uid": uid}});
        Bytes::from(obj.to_string())
    }

    fn token(authn: &Authenticator, tenant: &str, uid: &str) -> String {
        let claims =
            Claims::service_account(tenant, "apps", "robot", uid, vec![token::API_AUDIENCE.into()], token::now(), 600);
        authn.key().sign(&claims).unwrap()
    }

    #[tokio::test]
    async fn a_service_account_token_is_valid_only_in_its_tenant_while_its_account_lives() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(store::embedded::EmbeddedStore::open(&dir.path().join("store")).unwrap());
        let key = Bytes::from("/registry/serviceaccounts/acme/apps/robot");
        let rev = store.put(key.clone(), account("acme", "apps", "robot", "u1")).await.unwrap();
        let authn = Authenticator::start(store.clone(), dir.path()).await.unwrap();
        authn.directory().wait_for(directory::Watched::ServiceAccounts, rev).await;

        let who = authn.bearer(&token(&authn, "acme", "u1")).expect("the account's token");
        assert_eq!(who.user.name, "system:serviceaccount:apps:robot");
        assert_eq!(who.user.tenant, "acme");
        assert_eq!(who.method, Method::ServiceAccountToken);
        // The same account name in another tenant is another account.
        assert!(authn.bearer(&token(&authn, "globex", "u1")).is_none(), "wrong tenant");
        assert!(authn.bearer(&token(&authn, "acme", "u2")).is_none(), "wrong uid");

        let (rev, _) = store.delete(key, None).await.unwrap().unwrap();
        authn.directory().wait_for(directory::Watched::ServiceAccounts, rev).await;
        assert!(authn.bearer(&token(&authn, "acme", "u1")).is_none(), "the account is gone");
    }

    #[tokio::test]
    async fn the_directory_follows_tenants_terminating_ones_included() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(store::embedded::EmbeddedStore::open(&dir.path().join("store")).unwrap());
        let tenant = |name: &str, terminating: bool| {
            let mut meta = serde_json::json!({"tenant": "system", "name": name, "uid": "t1"});
            if terminating {
                meta["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
            }
            Bytes::from(
                serde_json::json!({"apiVersion": "atoll.io/v1", "kind": "Tenant", "metadata": meta}).to_string(),
            )
        };
        let key = |name: &str| Bytes::from(format!("/registry/tenants.atoll.io/system/{name}"));
        store.put(key("acme"), tenant("acme", false)).await.unwrap();
        let authn = Authenticator::start(store.clone(), dir.path()).await.unwrap();
        let d = authn.directory();
        assert_eq!(d.tenant("acme"), Some(false), "loaded at start");
        assert_eq!(d.tenant("globex"), None);
        let rev = store.put(key("globex"), tenant("globex", false)).await.unwrap();
        d.wait_for(directory::Watched::Tenants, rev).await;
        assert_eq!(d.tenant("globex"), Some(false), "followed");
        let rev = store.put(key("globex"), tenant("globex", true)).await.unwrap();
        d.wait_for(directory::Watched::Tenants, rev).await;
        assert_eq!(d.tenant("globex"), Some(true), "terminating, still there");
        let (rev, _) = store.delete(key("globex"), None).await.unwrap().unwrap();
        d.wait_for(directory::Watched::Tenants, rev).await;
        assert_eq!(d.tenant("globex"), None, "gone");
    }

    #[tokio::test]
    async fn presented_but_invalid_credentials_are_refused_not_anonymous() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(store::embedded::EmbeddedStore::open(&dir.path().join("store")).unwrap());
        let authn = Authenticator::start(store, dir.path()).await.unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let none = ConnectionCert::None;
        assert!(authn.authenticate(&none, None, "/api", ip).await.unwrap().is_none());
        for header in ["Bearer nonsense", "Bearer eyJ.eyJ.sig", "Basic !!!", "Basic YWNtZS9hbm46cHc=", "Digest x"] {
            let refused = authn.authenticate(&none, Some(header), "/api", ip).await.unwrap_err();
            assert_eq!(refused.status.code, 401, "{header}");
        }
        assert_eq!(authn.authenticate(&ConnectionCert::Invalid, None, "/api", ip).await.unwrap_err().status.code, 401);
    }

    #[tokio::test]
    async fn keystone_verdicts_on_basic_credentials_are_throttled_like_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(store::embedded::EmbeddedStore::open(&dir.path().join("store")).unwrap());
        let mut authn = Authenticator::start(store, dir.path()).await.unwrap();
        authn.external = true;
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let none = ConnectionCert::None;
        // "acme/ann:pw": no such User, so Keystone is asked, under the throttle's name.
        let header = "Basic YWNtZS9hbm46cHc=";
        let handed = |r: Result<Option<Authenticated>, Refused>| {
            let refused = r.unwrap_err();
            assert!(refused.not_ours && refused.status.code == 401, "{:?}", refused.status);
            refused.throttled_as.expect("a name to record the verdict under")
        };
        let who = handed(authn.authenticate(&none, Some(header), "/api", ip).await);
        assert_eq!(who, "acme/ann");
        for _ in 0..password::FREE_FAILURES {
            authn.external_verdict(&who, ip, false);
        }
        // A success clears the failures: as many again are free.
        authn.external_verdict(&who, ip, true);
        for _ in 0..password::FREE_FAILURES {
            handed(authn.authenticate(&none, Some(header), "/api", ip).await);
            authn.external_verdict(&who, ip, false);
        }
        handed(authn.authenticate(&none, Some(header), "/api", ip).await);
        authn.external_verdict(&who, ip, false);
        let throttled = authn.authenticate(&none, Some(header), "/api", ip).await.unwrap_err();
        assert_eq!(throttled.status.code, 429, "Keystone is not asked while throttled");
        assert!(!throttled.not_ours && throttled.retry_after.is_some());
        // Per source: another address is not held back.
        handed(authn.authenticate(&none, Some(header), "/api", other).await);
        // Bearer tokens for Keystone carry no user name to throttle under.
        let bearer = authn.authenticate(&none, Some("Bearer gAAAAAx"), "/api", ip).await.unwrap_err();
        assert!(bearer.not_ours && bearer.throttled_as.is_none());
    }
}
