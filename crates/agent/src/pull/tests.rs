//! The puller against an in-process registry double (plain HTTP on loopback, listed as
//! insecure), plus the pure parts: challenges and credential matching.

use std::collections::HashMap;
use std::convert::Infallible;

use hyper::service::service_fn;
use hyper::{Response, StatusCode};

use super::*;
use crate::images::{MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER_GZIP, Platform};
use crate::os::FakeOs;

#[test]
fn challenges_parse_like_rfc_7235() {
    let c = parse_challenges(
        r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
    );
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].scheme, "bearer");
    assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
    assert_eq!(c[0].params["service"], "registry.docker.io");
    assert_eq!(c[0].params["scope"], "repository:library/busybox:pull,push");
    let c = parse_challenges(r#"Basic realm="Registry Realm""#);
    assert_eq!(
        c,
        vec![Challenge { scheme: "basic".into(), params: [("realm".into(), "Registry Realm".into())].into() }]
    );
    // Two challenges in one header, bare values, an escaped quote.
    let c = parse_challenges(r#"Basic realm=x, Bearer realm="a\"b", error=invalid_token"#);
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].params["realm"], "x");
    assert_eq!(c[1].params["realm"], "a\"b");
    assert_eq!(c[1].params["error"], "invalid_token");
    assert!(parse_challenges("").is_empty());
    assert_eq!(parse_challenges("Negotiate")[0].scheme, "negotiate");
}

#[test]
fn credentials_match_registry_path_and_wildcards() {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut k = Keyring::default();
    let config = json(&serde_json::json!({"auths": {
        "https://index.docker.io/v1/": {"auth": b64("hub:h")},
        "reg.io:5000": {"username": "any", "password": "a"},
        "reg.io:5000/team": {"auth": b64("team:t")},
        "*.example.com": {"auth": b64("wild:w")},
        "broken.io": {"auth": "%%%"},
    }}));
    k.add_docker_config(&config).unwrap();
    // A dockercfg secret is the bare map.
    k.add_docker_config(&json(&serde_json::json!({"http://old.io/": {"auth": b64("old:o")}}))).unwrap();
    let users =
        |r: &str| k.lookup(&Reference::parse(r).unwrap()).into_iter().map(|c| c.username).collect::<Vec<_>>().join(",");
    assert_eq!(users("busybox"), "hub");
    assert_eq!(users("reg.io:5000/team/app:v1"), "team,any");
    assert_eq!(users("reg.io:5000/teammate/app"), "any");
    assert_eq!(users("a.example.com/x"), "wild");
    assert_eq!(users("a.b.example.com/x"), "");
    assert_eq!(users("old.io/x"), "old");
    assert_eq!(users("broken.io/x"), "");
    assert!(!format!("{:?}", k.lookup(&Reference::parse("busybox").unwrap())).contains("\"h\""));
}

fn json(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn sha(b: &[u8]) -> Digest {
    Digest::from_sha256(&Sha256::digest(b))
}

fn desc(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: sha(bytes).to_string(),
        size: bytes.len() as u64,
        platform: None,
        annotations: Default::default(),
    }
}

#[derive(Default)]
struct Double {
    /// path → (content type, body)
    routes: HashMap<String, (String, Bytes)>,
    /// Require `Bearer tok` (got from /token with basic `u:p`).
    bearer: bool,
    /// Require basic `u:p` directly.
    basic: bool,
    /// Delay blob answers (to overlap concurrent pulls).
    slow: bool,
    hits: Mutex<HashMap<String, usize>>,
}

impl Double {
    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

static BASIC_OK: &str = "Basic dTpw"; // base64("u:p")

async fn serve(double: Arc<Double>, addr: String, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    *double.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let reply = |code: StatusCode, body: &str| {
        Response::builder().status(code).body(Full::new(Bytes::from(body.to_string()))).unwrap()
    };
    if path == "/token" {
        return Ok(if auth == BASIC_OK {
            reply(StatusCode::OK, r#"{"token":"tok"}"#)
        } else {
            reply(StatusCode::UNAUTHORIZED, "{}")
        });
    }
    if double.bearer && auth != "Bearer tok" {
        let challenge =
            format!(r#"Bearer realm="http://{addr}/token",service="double",scope="repository:test/app:pull""#);
        return Ok(Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("www-authenticate", challenge)
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    if double.basic && auth != BASIC_OK {
        return Ok(Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("www-authenticate", r#"Basic realm="double""#)
            .body(Full::new(Bytes::new()))
            .unwrap());
    }
    if double.slow && path.contains("/blobs/") {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(match double.routes.get(&path) {
        Some((ct, body)) => {
            Response::builder().status(StatusCode::OK).header("content-type", ct).body(Full::new(body.clone())).unwrap()
        }
        None => reply(StatusCode::NOT_FOUND, r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#),
    })
}

/// Starts the double on loopback; returns its `host:port`.
async fn start(double: Double) -> (String, Arc<Double>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let double = Arc::new(double);
    let (d, a) = (double.clone(), addr.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (d, a) = (d.clone(), a.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| serve(d.clone(), a.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    (addr, double)
}

struct TestImage {
    config: Vec<u8>,
    layer: Vec<u8>,
    manifest: Vec<u8>,
}

fn image(seed: &str) -> TestImage {
    let config = json(&serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Env": [seed]}}));
    let layer = format!("layer bytes {seed}").repeat(1000).into_bytes();
    let manifest = json(&serde_json::json!({
        "schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
        "config": desc(MEDIA_OCI_CONFIG, &config), "layers": [desc(MEDIA_OCI_LAYER_GZIP, &layer)],
    }));
    TestImage { config, layer, manifest }
}

fn routes(img: &TestImage, tag: &str) -> HashMap<String, (String, Bytes)> {
    let blob = |b: &[u8]| {
        (format!("/v2/test/app/blobs/{}", sha(b)), ("application/octet-stream".into(), Bytes::from(b.to_vec())))
    };
    HashMap::from([
        (format!("/v2/test/app/manifests/{tag}"), (MEDIA_OCI_MANIFEST.into(), Bytes::from(img.manifest.clone()))),
        (
            format!("/v2/test/app/manifests/{}", sha(&img.manifest)),
            (MEDIA_OCI_MANIFEST.into(), Bytes::from(img.manifest.clone())),
        ),
        blob(&img.config),
        blob(&img.layer),
    ])
}

fn puller(addr: &str) -> (tempfile::TempDir, Puller) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ImageStore::open(dir.path(), Arc::new(FakeOs::new("", vec![]))).unwrap());
    let config = RegistryConfig { insecure: vec![addr.to_string()], ..RegistryConfig::default() };
    (dir, Puller::new(store, &config).unwrap())
}

fn cred() -> Credential {
    Credential { username: "u".into(), password: "p".into() }
}

#[tokio::test]
async fn bearer_flow_pulls_then_skips_present_blobs() {
    let img = image("a");
    let (addr, double) = start(Double { routes: routes(&img, "v1"), bearer: true, ..Double::default() }).await;
    let (_dir, p) = puller(&addr);
    let r = Reference::parse(&format!("{addr}/test/app:v1")).unwrap();
    // Anonymous: the token service refuses.
    assert!(matches!(p.pull(&r, &[]).await, Err(PullError::Unauthorized(_))));
    // A wrong credential first, the right one next: the right one wins.
    let wrong = Credential { username: "u".into(), password: "nope".into() };
    let Pulled { image, stats, credential } = p.pull_uncoalesced(&r, &[wrong, cred()]).await.unwrap();
    assert_eq!(credential, Some(1));
    assert_eq!(image.manifest_digest, sha(&img.manifest));
    assert_eq!(
        (stats.blobs_fetched, stats.blobs_skipped, stats.bytes),
        (2, 0, (img.config.len() + img.layer.len()) as u64)
    );
    assert_eq!(p.store().resolve(&r.to_string()).unwrap().manifest_digest, image.manifest_digest);
    // Reported as the kubelet reports containerd's images: by repository digest.
    let repo_digest = format!("{addr}/test/app@{}", sha(&img.manifest));
    assert_eq!(p.store().resolve(&r.to_string()).unwrap().image_ref(), repo_digest);
    let again = p.pull_uncoalesced(&r, &[cred()]).await.unwrap().stats;
    assert_eq!((again.blobs_fetched, again.blobs_skipped), (0, 2));
    assert_eq!(double.hits(&format!("/v2/test/app/blobs/{}", sha(&img.layer))), 1);
}

#[tokio::test]
async fn basic_auth_and_plain_http_only_when_insecure() {
    let img = image("b");
    let (addr, _double) = start(Double { routes: routes(&img, "v1"), basic: true, ..Double::default() }).await;
    let (_dir, p) = puller(&addr);
    let r = Reference::parse(&format!("{addr}/test/app:v1")).unwrap();
    assert!(matches!(p.pull(&r, &[]).await, Err(PullError::Unauthorized(_))));
    p.pull(&r, &[cred()]).await.unwrap();
    // Not listed as insecure: HTTPS is tried (and fails against a plain HTTP server); no
    // clear text is spoken.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ImageStore::open(dir.path(), Arc::new(FakeOs::new("", vec![]))).unwrap());
    let strict = Puller::new(store, &RegistryConfig::default()).unwrap();
    assert!(matches!(strict.pull(&r, &[cred()]).await, Err(PullError::Connect { .. } | PullError::Http { .. })));
}

#[tokio::test]
async fn an_index_resolves_to_the_host_platform() {
    let (amd, arm) = (image("amd"), image("arm"));
    let entry = |m: &[u8], arch: &str| {
        let mut d = desc(MEDIA_OCI_MANIFEST, m);
        d.platform = Some(Platform { architecture: arch.into(), os: "linux".into(), variant: None });
        d
    };
    let index = json(&serde_json::json!({
        "schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX,
        "manifests": [entry(&arm.manifest, "arm64"), entry(&amd.manifest, host_platform().1)],
    }));
    let mut r = routes(&amd, "unused");
    r.insert("/v2/test/app/manifests/multi".into(), (MEDIA_OCI_INDEX.into(), Bytes::from(index.clone())));
    r.insert(format!("/v2/test/app/manifests/{}", sha(&index)), (MEDIA_OCI_INDEX.into(), Bytes::from(index.clone())));
    let (addr, _double) = start(Double { routes: r, ..Double::default() }).await;
    let (_dir, p) = puller(&addr);
    let image = p.pull(&Reference::parse(&format!("{addr}/test/app:multi")).unwrap(), &[]).await.unwrap().image;
    assert_eq!(image.manifest_digest, sha(&amd.manifest));
    // A multi-platform image's repository digest is its index's (what the tag named).
    assert_eq!(image.image_ref(), format!("{addr}/test/app@{}", sha(&index)));
    // By the index's digest: the store finds the platform's image under that name.
    let by_digest = format!("{addr}/test/app@{}", sha(&index));
    p.pull(&Reference::parse(&by_digest).unwrap(), &[]).await.unwrap();
    assert_eq!(p.store().resolve(&by_digest).unwrap().manifest_digest, sha(&amd.manifest));
}

#[tokio::test]
async fn corrupt_content_is_refused_and_never_stored() {
    let img = image("c");
    let mut r = routes(&img, "v1");
    // Same length, other bytes: only the digest can tell.
    let mut bad = img.layer.clone();
    bad[0] ^= 1;
    r.insert(format!("/v2/test/app/blobs/{}", sha(&img.layer)), ("application/octet-stream".into(), Bytes::from(bad)));
    // A manifest asked for by a digest it does not have.
    let other = sha(b"something else");
    r.insert(format!("/v2/test/app/manifests/{other}"), (MEDIA_OCI_MANIFEST.into(), Bytes::from(img.manifest.clone())));
    let (addr, _double) = start(Double { routes: r, ..Double::default() }).await;
    let (dir, p) = puller(&addr);
    let err = p.pull(&Reference::parse(&format!("{addr}/test/app:v1")).unwrap(), &[]).await.unwrap_err();
    assert!(matches!(err, PullError::DigestMismatch { .. }), "{err}");
    assert!(!p.store().has_blob(&sha(&img.layer)));
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "no partial blob is left");
    let err = p.pull(&Reference::parse(&format!("{addr}/test/app@{other}")).unwrap(), &[]).await.unwrap_err();
    assert!(matches!(err, PullError::DigestMismatch { .. }), "{err}");
    let missing = Reference::parse(&format!("{addr}/test/app@{}", sha(b"nothing"))).unwrap();
    assert!(matches!(p.pull(&missing, &[]).await, Err(PullError::NotFound(_))));
}

#[tokio::test]
async fn a_blob_longer_than_its_descriptor_is_cut_off() {
    let img = image("d");
    let mut r = routes(&img, "v1");
    let mut long = img.layer.clone();
    long.extend_from_slice(b"more");
    r.insert(format!("/v2/test/app/blobs/{}", sha(&img.layer)), ("application/octet-stream".into(), Bytes::from(long)));
    let (addr, _double) = start(Double { routes: r, ..Double::default() }).await;
    let (_dir, p) = puller(&addr);
    let err = p.pull(&Reference::parse(&format!("{addr}/test/app:v1")).unwrap(), &[]).await.unwrap_err();
    assert!(matches!(err, PullError::TooLarge(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image_share_one_transfer() {
    let img = image("e");
    let (addr, double) = start(Double { routes: routes(&img, "v1"), slow: true, ..Double::default() }).await;
    let (_dir, p) = puller(&addr);
    let p = Arc::new(p);
    let r = Reference::parse(&format!("{addr}/test/app:v1")).unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (p, r) = (p.clone(), r.clone());
            tokio::spawn(async move { p.pull(&r, &[]).await.map(|i| i.image.manifest_digest) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), sha(&img.manifest));
    }
    assert_eq!(double.hits("/v2/test/app/manifests/v1"), 1);
    assert_eq!(double.hits(&format!("/v2/test/app/blobs/{}", sha(&img.layer))), 1);
    // Other credentials do not ride on someone else's pull.
    let creds = [cred()];
    let (a, b) = tokio::join!(p.pull(&r, &[]), p.pull(&r, &creds));
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(double.hits("/v2/test/app/manifests/v1"), 3);
}

#[test]
fn urls() {
    let u = Url::parse("https://reg.io:5000/v2/x?y=1").unwrap();
    assert_eq!((u.host(), u.socket_addr().as_str(), u.path.as_str()), ("reg.io", "reg.io:5000", "/v2/x?y=1"));
    assert_eq!(Url::parse("http://[::1]:80/a").unwrap().host(), "::1");
    assert_eq!(Url::parse("https://reg.io").unwrap().socket_addr(), "reg.io:443");
    assert_eq!(u.join("/v2/upload/1").unwrap().authority, "reg.io:5000");
    assert!(Url::parse("ftp://x").is_err());
    assert!(Url::parse("https://user@x/").is_err());
}
