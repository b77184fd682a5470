//! The node's image store: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`) plus unpacked layers (`layers/sha256/<hex>/`, one folder per layer
//! blob, unpacked once and shared by every image and container that uses it).
//!
//! Writers (the importer here, a registry puller later) stream content through
//! [`BlobWriter`], which hashes while writing to `tmp/` and renames into `blobs/` only when
//! the digest is right, so a blob that exists is always complete and correct; then
//! [`ImageStore::tag`] points a name at a manifest. A blob already present is never
//! written twice. `index.json` is rewritten atomically (temporary file + rename) under a
//! lock, and every entry's `org.opencontainers.image.ref.name` is a full normalised
//! reference (`docker.io/library/busybox:latest`).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::os::{Os, OsError, write_atomic};
use crate::reference::{Digest, Reference, ReferenceError};

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Os(#[from] OsError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error("{0:?} matches more than one image")]
    Ambiguous(String),
    #[error("blob {expected} has digest {actual}: content is corrupt")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("malformed {what}: {detail}")]
    Malformed { what: String, detail: String },
    #[error("{0} is neither an OCI image layout, an OCI archive nor a docker archive")]
    UnknownFormat(PathBuf),
    #[error("the import holds {0} images; --name can only name one")]
    NameForMany(usize),
    #[error("the imported image has no name (no ref.name annotation, no repo tag): give one with --name")]
    Unnamed,
    #[error("no manifest for {os}/{arch} in the image index")]
    NoPlatform { os: &'static str, arch: &'static str },
    #[error("layer entry {0:?} escapes the layer root")]
    UnsafePath(PathBuf),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ImageError + 'a {
    move |source| ImageError::Io { what, path: path.to_owned(), source }
}

fn malformed(what: impl std::fmt::Display, e: impl std::fmt::Display) -> ImageError {
    ImageError::Malformed { what: what.to_string(), detail: e.to_string() }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The parts of an image's configuration a runtime uses.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
}

/// An image in the store, resolved to one manifest.
#[derive(Clone, Debug)]
pub struct Image {
    /// Every name that points at this manifest.
    pub names: Vec<String>,
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    /// The config's digest: the image ID in Docker's sense.
    pub id: Digest,
    pub config: ImageConfig,
}

impl Image {
    /// What a pod's `status.containerStatuses[].imageID` says, as the kubelet reports
    /// containerd's: the repository digest (`registry/repo@sha256:...`) of an image pulled
    /// from a registry, else (a local image) its ID, the config's digest.
    pub fn image_ref(&self) -> String {
        let mut by_digest: Vec<String> = self
            .names
            .iter()
            .filter_map(|n| Reference::parse(n).ok())
            .filter(|r| r.digest.is_some())
            .map(|r| Reference { tag: None, ..r }.to_string())
            .collect();
        by_digest.sort();
        by_digest.into_iter().next().unwrap_or_else(|| self.id.to_string())
    }

    /// Bytes of the (possibly compressed) layers, as `crictl images` reports size.
    pub fn size(&self) -> u64 {
        self.manifest.layers.iter().map(|l| l.size).sum::<u64>() + self.manifest.config.size
    }
}

/// Streams a blob into the store's `tmp/`, hashing as it goes.
pub struct BlobWriter {
    file: File,
    tmp: PathBuf,
    blobs: PathBuf,
    hasher: Sha256,
    size: u64,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter {
    /// Drop what was written (a transfer failed midway): nothing reaches `blobs/`.
    pub fn abort(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }

    /// Move the blob into place; with `expected`, refuse content whose digest differs.
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64), ImageError> {
        let actual = Digest::from_sha256(&self.hasher.finalize());
        if let Some(expected) = expected
            && *expected != actual
        {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(ImageError::DigestMismatch { expected: expected.clone(), actual });
        }
        self.file.sync_all().map_err(io("syncing", &self.tmp))?;
        let dest = self.blobs.join(actual.hex());
        std::fs::rename(&self.tmp, &dest).map_err(io("storing", &dest))?;
        Ok((actual, self.size))
    }
}

pub struct ImageStore {
    root: PathBuf,
    os: Arc<dyn Os>,
    /// Serialises index.json rewrites within this process; [`ImageStore::lock_index`]
    /// adds a file lock so `atoll image` and the agent can write at once.
    index_lock: Mutex<()>,
    /// The images as `index.json` named them when it last held these bytes: every sync
    /// pass resolves its pods' images (pull check, `imageID`), and reading and parsing every
    /// manifest and config each time was three files per container per second. Blobs are
    /// content-addressed and never change, so the same index names the same images. (The
    /// index's bytes, not its inode and time: a rewrite within the clock's few-millisecond
    /// granularity may reuse the old file's inode and keep its size.)
    listed: Mutex<Option<Listed>>,
    /// One lock per layer being unpacked: a burst of pods of an image not yet unpacked
    /// unpacked it once per sync worker at the same time (16 decompressions and 16 copies of
    /// its files, all but one thrown away); now the others wait for the first.
    unpacking: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// `index.json`'s bytes and the images they name.
type Listed = (Vec<u8>, Arc<Vec<Image>>);

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore").field("root", &self.root).finish()
    }
}

/// The OCI platform names of the machine we run on.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    ("linux", arch)
}

fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ImageError> {
    let bytes = std::fs::read(path).map_err(io("reading", path))?;
    serde_json::from_slice(&bytes).map_err(|e| malformed(path.display(), e))
}

/// Check that a tar entry's path stays inside the layer root: relative, no `..`.
fn safe_relative(path: &Path) -> Result<PathBuf, ImageError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return Err(ImageError::UnsafePath(path.to_owned())),
        }
    }
    Ok(out)
}

/// `root/rel` as a real folder, creating what is missing, refusing a symlink anywhere on
/// the way: an earlier entry of the layer (`etc -> /etc`) must not let a whiteout
/// (`etc/.wh.passwd`) delete or mark anything outside the layer.
fn real_dir_below(root: &Path, rel: &Path) -> Result<PathBuf, ImageError> {
    let mut dir = root.to_owned();
    for c in safe_relative(rel)?.components() {
        dir.push(c);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(ImageError::UnsafePath(rel.to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&dir).map_err(io("creating", &dir))?;
            }
            Err(e) => return Err(io("reading", &dir)(e)),
        }
    }
    Ok(dir)
}

/// `dir/rel` if it resolves (symlinks followed) to a file inside `dir`; an archive's
/// manifest must not make us copy a file of the host into the store.
fn file_inside(dir: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let path = dir.join(safe_relative(Path::new(rel))?);
    let real = std::fs::canonicalize(&path).map_err(io("resolving", &path))?;
    let root = std::fs::canonicalize(dir).map_err(io("resolving", dir))?;
    if !real.starts_with(&root) {
        return Err(ImageError::UnsafePath(PathBuf::from(rel)));
    }
    Ok(real)
}

/// Open a possibly gzip-compressed tar stream (detected by its magic bytes, not its media
/// type, because docker archives and some registries label layers loosely).
fn open_tar(path: &Path) -> Result<tar::Archive<Box<dyn Read>>, ImageError> {
    let mut file = File::open(path).map_err(io("opening", path))?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).map_err(io("reading", path))?;
    file.rewind().map_err(io("reading", path))?;
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    Ok(tar::Archive::new(reader))
}

impl ImageStore {
    pub fn open(root: &Path, os: Arc<dyn Os>) -> Result<ImageStore, ImageError> {
        for d in ["blobs/sha256", "layers/sha256", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io("creating", &p))?;
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io("writing", &layout))?;
        }
        let index = root.join("index.json");
        if !index.exists() {
            let empty = Index { schema_version: 2, media_type: Some(MEDIA_OCI_INDEX.into()), manifests: vec![] };
            write_atomic(&index, &serde_json::to_vec_pretty(&empty).unwrap_or_default())
                .map_err(io("writing", &index))?;
        }
        Ok(ImageStore {
            root: root.to_owned(),
            os,
            index_lock: Mutex::new(()),
            listed: Mutex::new(None),
            unpacking: Mutex::new(HashMap::new()),
        })
    }

    /// Hold both the in-process lock and an exclusive `flock` on `index.lock` (released
    /// when the returned guard drops).
    fn lock_index(&self) -> Result<(std::sync::MutexGuard<'_, ()>, File), ImageError> {
        let guard = self.index_lock.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.root.join("index.lock");
        let file =
            File::options().create(true).truncate(false).write(true).open(&path).map_err(io("opening", &path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io("locking", &path)(std::io::Error::from(e)))?;
        Ok((guard, file))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).exists()
    }

    pub fn begin_blob(&self) -> Result<BlobWriter, ImageError> {
        let tmp_dir = self.root.join("tmp");
        let tmp =
            tempfile::Builder::new().prefix("blob-").tempfile_in(&tmp_dir).map_err(io("creating in", &tmp_dir))?;
        let (file, tmp) = tmp.keep().map_err(|e| io("creating in", &tmp_dir)(e.error))?;
        Ok(BlobWriter { file, tmp, blobs: self.root.join("blobs/sha256"), hasher: Sha256::new(), size: 0 })
    }

    pub fn put_blob(&self, bytes: &[u8]) -> Result<(Digest, u64), ImageError> {
        let digest = Digest::from_sha256(&Sha256::digest(bytes));
        if self.has_blob(&digest) {
            return Ok((digest, bytes.len() as u64));
        }
        let mut w = self.begin_blob()?;
        w.write_all(bytes).map_err(io("writing", &w.tmp.clone()))?;
        w.commit(Some(&digest))
    }

    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let p = self.blob_path(digest);
        std::fs::read(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ImageError::NotFound(digest.to_string())
            } else {
                io("reading", &p)(e)
            }
        })
    }

    fn read_index(&self) -> Result<Index, ImageError> {
        read_json(&self.root.join("index.json"))
    }

    /// Point `reference` at a manifest already in the store (replacing what it named).
    pub fn tag(&self, reference: &Reference, manifest: &Digest) -> Result<(), ImageError> {
        let bytes = self.read_blob(manifest)?;
        let _: Manifest = serde_json::from_slice(&bytes).map_err(|e| malformed(format!("manifest {manifest}"), e))?;
        let name = reference.to_string();
        let _guard = self.lock_index()?;
        let mut index = self.read_index()?;
        index.manifests.retain(|d| d.annotations.get(ANNOTATION_REF_NAME) != Some(&name));
        index.manifests.push(Descriptor {
            media_type: MEDIA_OCI_MANIFEST.into(),
            digest: manifest.to_string(),
            size: bytes.len() as u64,
            platform: None,
            annotations: BTreeMap::from([(ANNOTATION_REF_NAME.to_owned(), name)]),
        });
        let path = self.root.join("index.json");
        write_atomic(&path, &serde_json::to_vec_pretty(&index).unwrap_or_default()).map_err(io("writing", &path))
    }

    /// Remove a name; the blobs stay until [`ImageStore::gc`].
    pub fn untag(&self, reference: &Reference) -> Result<bool, ImageError> {
        let name = reference.to_string();
        let _guard = self.lock_index()?;
        let mut index = self.read_index()?;
        let before = index.manifests.len();
        index.manifests.retain(|d| d.annotations.get(ANNOTATION_REF_NAME) != Some(&name));
        let path = self.root.join("index.json");
        write_atomic(&path, &serde_json::to_vec_pretty(&index).unwrap_or_default()).map_err(io("writing", &path))?;
        Ok(index.manifests.len() != before)
    }

    fn load(&self, manifest_digest: &Digest, names: Vec<String>) -> Result<Image, ImageError> {
        let manifest: Manifest = serde_json::from_slice(&self.read_blob(manifest_digest)?)
            .map_err(|e| malformed(format!("manifest {manifest_digest}"), e))?;
        let id = Digest::parse(&manifest.config.digest)
            .ok_or_else(|| malformed("config digest", &manifest.config.digest))?;
        let config: ImageConfig =
            serde_json::from_slice(&self.read_blob(&id)?).map_err(|e| malformed(format!("config {id}"), e))?;
        Ok(Image { names, manifest_digest: manifest_digest.clone(), manifest, id, config })
    }

    /// Every image, one per manifest, with all its names.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        Ok(self.images()?.to_vec())
    }

    /// [`ImageStore::list`], from memory while `index.json` holds what it held last time.
    fn images(&self) -> Result<Arc<Vec<Image>>, ImageError> {
        let path = self.root.join("index.json");
        let bytes = std::fs::read(&path).map_err(io("reading", &path))?;
        if let Some((seen, images)) = &*self.listed.lock().unwrap_or_else(|e| e.into_inner())
            && *seen == bytes
        {
            return Ok(images.clone());
        }
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| malformed(path.display(), e))?;
        let images = Arc::new(self.images_of(index)?);
        *self.listed.lock().unwrap_or_else(|e| e.into_inner()) = Some((bytes, images.clone()));
        Ok(images)
    }

    fn images_of(&self, index: Index) -> Result<Vec<Image>, ImageError> {
        let mut by_digest: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
        for d in index.manifests {
            let Some(digest) = Digest::parse(&d.digest) else { continue };
            let names = by_digest.entry(digest).or_default();
            if let Some(n) = d.annotations.get(ANNOTATION_REF_NAME) {
                names.push(n.clone());
            }
        }
        by_digest.into_iter().map(|(d, names)| self.load(&d, names)).collect()
    }

    /// Delete blobs and unpacked layers that no named image uses, except the layer
    /// folders in `in_use` (the lower layers of containers that exist: overlayfs forbids
    /// changing a mounted lower layer). Returns how many blobs and layers went. The caller
    /// must not import or pull meanwhile: blobs written but not yet tagged look unused.
    pub fn gc(&self, in_use: &[PathBuf]) -> Result<(usize, usize), ImageError> {
        let _guard = self.lock_index()?;
        let mut live: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        for image in self.list()? {
            live.insert(image.manifest_digest.hex().to_owned());
            live.insert(image.id.hex().to_owned());
            for l in &image.manifest.layers {
                if let Some(d) = Digest::parse(&l.digest) {
                    live.insert(d.hex().to_owned());
                }
            }
        }
        let mut counts = (0, 0);
        for (sub, count) in [("blobs/sha256", &mut counts.0), ("layers/sha256", &mut counts.1)] {
            let dir = self.root.join(sub);
            for entry in std::fs::read_dir(&dir).map_err(io("listing", &dir))? {
                let path = entry.map_err(io("listing", &dir))?.path();
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if live.contains(&name) || in_use.contains(&path) {
                    continue;
                }
                let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                removed.map_err(io("removing", &path))?;
                *count += 1;
            }
        }
        Ok(counts)
    }

    /// Find an image by name (`busybox`, `busybox:1.36`, full names), by `name@digest`,
    /// or by a bare manifest digest or image ID (`sha256:...`).
    pub fn resolve(&self, input: &str) -> Result<Image, ImageError> {
        let images = self.images()?;
        if let Some(d) = Digest::parse(input) {
            let found: Vec<&Image> = images.iter().filter(|i| i.manifest_digest == d || i.id == d).collect();
            return match found.as_slice() {
                [one] => Ok((*one).clone()),
                [] => Err(ImageError::NotFound(input.to_owned())),
                _ => Err(ImageError::Ambiguous(input.to_owned())),
            };
        }
        let r = Reference::parse(input)?;
        let want = r.to_string();
        let found = match &r.digest {
            // Or by name: a pull by an index's digest names the platform's manifest with it.
            Some(d) => images.iter().find(|i| i.manifest_digest == *d || i.names.contains(&want)),
            None => images.iter().find(|i| i.names.contains(&want)),
        };
        found.cloned().ok_or_else(|| ImageError::NotFound(input.to_owned()))
    }

    /// The unpacked folder of each layer, bottom layer first; layers are unpacked on first
    /// use and kept for every later image or container that shares them.
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>, ImageError> {
        image.manifest.layers.iter().map(|l| self.unpack_layer(l)).collect()
    }

    fn unpack_layer(&self, layer: &Descriptor) -> Result<PathBuf, ImageError> {
        let digest = Digest::parse(&layer.digest).ok_or_else(|| malformed("layer digest", &layer.digest))?;
        let dest = self.root.join("layers/sha256").join(digest.hex());
        if dest.exists() {
            return Ok(dest);
        }
        let lock = self
            .unpacking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(digest.hex().to_owned())
            .or_default()
            .clone();
        let _unpacking = lock.lock().unwrap_or_else(|e| e.into_inner());
        let unpacked = match dest.exists() {
            // Another worker's unpack finished while this one waited.
            true => Ok(dest),
            false => self.unpack_layer_to(layer, &digest, dest),
        };
        self.unpacking.lock().unwrap_or_else(|e| e.into_inner()).remove(digest.hex());
        unpacked
    }

    fn unpack_layer_to(&self, layer: &Descriptor, digest: &Digest, dest: PathBuf) -> Result<PathBuf, ImageError> {
        if layer.media_type.contains("zstd") {
            return Err(malformed(format!("layer {digest}"), "zstd layers are not supported"));
        }
        let tmp_root = self.root.join("tmp");
        let tmp =
            tempfile::Builder::new().prefix("layer-").tempdir_in(&tmp_root).map_err(io("creating in", &tmp_root))?;
        let blob = self.blob_path(digest);
        let mut archive = open_tar(&blob)?;
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_overwrite(true);
        archive.set_unpack_xattrs(false);
        let entries = archive.entries().map_err(io("reading layer", &blob))?;
        for entry in entries {
            let mut entry = entry.map_err(io("reading layer", &blob))?;
            let path = safe_relative(&entry.path().map_err(io("reading layer", &blob))?)?;
            let Some(file_name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
            if let Some(hidden) = file_name.strip_prefix(".wh.") {
                // Whiteouts become what overlayfs understands: an opaque marker on the
                // folder, or a 0:0 character device in place of the hidden name.
                let parent = real_dir_below(tmp.path(), path.parent().unwrap_or(Path::new("")))?;
                if hidden == ".wh..opq" {
                    self.os.set_opaque(&parent)?;
                } else {
                    self.os.make_whiteout(&parent.join(hidden))?;
                }
                continue;
            }
            entry.unpack_in(tmp.path()).map_err(io("unpacking layer", &blob))?;
        }
        let tmp = tmp.keep();
        match std::fs::rename(&tmp, &dest) {
            Ok(()) => Ok(dest),
            // Someone unpacked the same layer meanwhile: theirs is as good as ours.
            Err(_) if dest.exists() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(dest)
            }
            Err(e) => Err(io("storing layer", &dest)(e)),
        }
    }

    /// Copy one blob from a file, verifying its digest; skipped when already present.
    fn copy_blob_from(&self, src: &Path, expected: Option<&Digest>) -> Result<(Digest, u64), ImageError> {
        if let Some(d) = expected
            && self.has_blob(d)
        {
            let size = std::fs::metadata(self.blob_path(d)).map_err(io("reading", src))?.len();
            return Ok((d.clone(), size));
        }
        let mut from = File::open(src).map_err(io("opening", src))?;
        let mut w = self.begin_blob()?;
        std::io::copy(&mut from, &mut w).map_err(io("copying", src))?;
        w.commit(expected)
    }

    /// Import an OCI image layout folder, an OCI archive (tar of a layout) or a `docker
    /// save` archive, optionally gzip-compressed. Returns the images imported, by name.
    pub fn import(&self, path: &Path, name: Option<&str>) -> Result<Vec<Image>, ImageError> {
        let name = name.map(Reference::parse).transpose()?;
        if path.is_dir() {
            return self.import_dir(path, name.as_ref());
        }
        let tmp_root = self.root.join("tmp");
        let tmp =
            tempfile::Builder::new().prefix("import-").tempdir_in(&tmp_root).map_err(io("creating in", &tmp_root))?;
        let mut archive = open_tar(path)?;
        archive.set_preserve_permissions(false);
        archive.unpack(tmp.path()).map_err(io("unpacking", path))?;
        self.import_dir(tmp.path(), name.as_ref()).map_err(|e| {
            if matches!(e, ImageError::UnknownFormat(_)) { ImageError::UnknownFormat(path.to_owned()) } else { e }
        })
    }

    fn import_dir(&self, dir: &Path, name: Option<&Reference>) -> Result<Vec<Image>, ImageError> {
        if dir.join("oci-layout").exists() && dir.join("index.json").exists() {
            self.import_oci_layout(dir, name)
        } else if dir.join("manifest.json").exists() {
            self.import_docker_archive(dir, name)
        } else {
            Err(ImageError::UnknownFormat(dir.to_owned()))
        }
    }

    fn layout_blob(dir: &Path, digest: &Digest) -> PathBuf {
        dir.join("blobs/sha256").join(digest.hex())
    }

    fn import_oci_layout(&self, dir: &Path, name: Option<&Reference>) -> Result<Vec<Image>, ImageError> {
        let index: Index = read_json(&dir.join("index.json"))?;
        // (manifest digest, names)
        let mut found: Vec<(Digest, Vec<Reference>)> = Vec::new();
        for desc in &index.manifests {
            let mut names = Vec::new();
            for key in [ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME] {
                if let Some(n) = desc.annotations.get(key)
                    && let Ok(r) = Reference::parse(n)
                    && !names.contains(&r)
                {
                    names.push(r);
                }
            }
            let digest = Digest::parse(&desc.digest).ok_or_else(|| malformed("index entry", &desc.digest))?;
            let digest = if is_index(&desc.media_type) {
                let (os, arch) = host_platform();
                let nested: Index = read_json(&Self::layout_blob(dir, &digest))?;
                let pick = nested
                    .manifests
                    .iter()
                    .find(|m| m.platform.as_ref().is_some_and(|p| p.os == os && p.architecture == arch))
                    .ok_or(ImageError::NoPlatform { os, arch })?;
                Digest::parse(&pick.digest).ok_or_else(|| malformed("index entry", &pick.digest))?
            } else {
                digest
            };
            match found.iter_mut().find(|(d, _)| *d == digest) {
                Some((_, n)) => n.extend(names),
                None => found.push((digest, names)),
            }
        }
        if name.is_some() && found.len() > 1 {
            return Err(ImageError::NameForMany(found.len()));
        }
        let mut out = Vec::new();
        for (digest, mut names) in found {
            let manifest_path = Self::layout_blob(dir, &digest);
            let manifest: Manifest = read_json(&manifest_path)?;
            for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
                let d = Digest::parse(&blob.digest).ok_or_else(|| malformed("manifest entry", &blob.digest))?;
                self.copy_blob_from(&Self::layout_blob(dir, &d), Some(&d))?;
            }
            self.copy_blob_from(&manifest_path, Some(&digest))?;
            if let Some(n) = name {
                names = vec![n.clone()];
            }
            if names.is_empty() {
                return Err(ImageError::Unnamed);
            }
            for n in &names {
                self.tag(n, &digest)?;
            }
            out.push(self.load(&digest, names.iter().map(|n| n.to_string()).collect())?);
        }
        Ok(out)
    }

    fn import_docker_archive(&self, dir: &Path, name: Option<&Reference>) -> Result<Vec<Image>, ImageError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let entries: Vec<Entry> = read_json(&dir.join("manifest.json"))?;
        if name.is_some() && entries.len() > 1 {
            return Err(ImageError::NameForMany(entries.len()));
        }
        let mut out = Vec::new();
        for e in entries {
            let file = |rel: &str| file_inside(dir, rel);
            let (config_digest, config_size) = self.copy_blob_from(&file(&e.config)?, None)?;
            let mut layers = Vec::new();
            for l in &e.layers {
                let src = file(l)?;
                let mut magic = [0u8; 2];
                let gz = File::open(&src).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == [0x1f, 0x8b];
                let (digest, size) = self.copy_blob_from(&src, None)?;
                let media_type = if gz { MEDIA_OCI_LAYER_GZIP } else { MEDIA_OCI_LAYER_TAR };
                layers.push(Descriptor {
                    media_type: media_type.into(),
                    digest: digest.to_string(),
                    size,
                    platform: None,
                    annotations: BTreeMap::new(),
                });
            }
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(MEDIA_OCI_MANIFEST.into()),
                config: Descriptor {
                    media_type: MEDIA_OCI_CONFIG.into(),
                    digest: config_digest.to_string(),
                    size: config_size,
                    platform: None,
                    annotations: BTreeMap::new(),
                },
                layers,
            };
            let bytes = serde_json::to_vec(&manifest).map_err(|e| malformed("manifest", e))?;
            let (digest, _) = self.put_blob(&bytes)?;
            let names: Vec<Reference> = match name {
                Some(n) => vec![n.clone()],
                None => {
                    e.repo_tags.unwrap_or_default().iter().map(|t| Reference::parse(t)).collect::<Result<_, _>>()?
                }
            };
            if names.is_empty() {
                return Err(ImageError::Unnamed);
            }
            for n in &names {
                self.tag(n, &digest)?;
            }
            out.push(self.load(&digest, names.iter().map(|n| n.to_string()).collect())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::{Call, FakeOs};

    fn layer(entries: &[(&str, Option<&[u8]>)], gzip: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, path, std::io::empty()).unwrap();
                }
            }
        }
        let bytes = b.into_inner().unwrap();
        if gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&bytes).unwrap();
            gz.finish().unwrap()
        } else {
            bytes
        }
    }

    #[test]
    fn image_ref_is_a_repository_digest_or_the_image_id() {
        let hex = |c: char| c.to_string().repeat(64);
        let mut image = Image {
            names: vec!["docker.io/library/busybox:latest".into()],
            manifest_digest: Digest::parse(&format!("sha256:{}", hex('a'))).unwrap(),
            manifest: serde_json::from_value(serde_json::json!({"schemaVersion": 2,
                "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": format!("sha256:{}", hex('c')), "size": 1},
                "layers": []}))
            .unwrap(),
            id: Digest::parse(&format!("sha256:{}", hex('c'))).unwrap(),
            config: serde_json::from_value(serde_json::json!({"architecture": "amd64", "os": "linux"})).unwrap(),
        };
        // A local image (built or imported, never pulled): its ID.
        assert_eq!(image.image_ref(), format!("sha256:{}", hex('c')));
        // Pulled: the repository digest, without the tag.
        image.names.push(format!("127.0.0.1:5000/team/app:v1@sha256:{}", hex('b')));
        assert_eq!(image.image_ref(), format!("127.0.0.1:5000/team/app@sha256:{}", hex('b')));
    }

    #[test]
    fn unpacks_gzip_layers_once_and_turns_whiteouts_into_os_calls() {
        let dir = tempfile::tempdir().unwrap();
        let os = Arc::new(FakeOs::new("", vec![]));
        let store = ImageStore::open(dir.path(), os.clone()).unwrap();
        let bytes = layer(
            &[("etc/", None), ("etc/hosts", Some(b"x")), ("etc/.wh.old", None), ("var/.wh..wh..opq", None)],
            true,
        );
        let (digest, size) = store.put_blob(&bytes).unwrap();
        let desc = Descriptor {
            media_type: MEDIA_OCI_LAYER_GZIP.into(),
            digest: digest.to_string(),
            size,
            platform: None,
            annotations: BTreeMap::new(),
        };
        let out = store.unpack_layer(&desc).unwrap();
        assert_eq!(std::fs::read(out.join("etc/hosts")).unwrap(), b"x");
        assert_eq!(
            os.calls(),
            vec![Call::Whiteout(out_tmp_parent(&os, "etc/old")), Call::Opaque(out_tmp_parent(&os, "var"))]
        );
        // A second unpack finds the folder and does nothing.
        assert_eq!(store.unpack_layer(&desc).unwrap(), out);
        assert_eq!(os.calls().len(), 2);
    }

    #[test]
    fn workers_unpacking_the_same_layer_at_once_unpack_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let os = Arc::new(FakeOs::new("", vec![]));
        let store = ImageStore::open(dir.path(), os.clone()).unwrap();
        let bytes = layer(&[("etc/", None), ("etc/hosts", Some(b"x")), ("etc/.wh.old", None)], true);
        let (digest, size) = store.put_blob(&bytes).unwrap();
        let desc = Descriptor {
            media_type: MEDIA_OCI_LAYER_GZIP.into(),
            digest: digest.to_string(),
            size,
            platform: None,
            annotations: BTreeMap::new(),
        };
        let outs: Vec<PathBuf> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8).map(|_| scope.spawn(|| store.unpack_layer(&desc).unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(outs.iter().all(|o| *o == outs[0] && o.join("etc/hosts").is_file()), "{outs:?}");
        // One unpack, so one whiteout made, and no abandoned copy left in tmp/.
        assert_eq!(os.calls().len(), 1, "{:?}", os.calls());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn resolving_follows_index_rewrites_by_any_store() {
        let dir = tempfile::tempdir().unwrap();
        let open = || ImageStore::open(dir.path(), Arc::new(FakeOs::new("", vec![]))).unwrap();
        let manifest = |config: &[u8]| {
            let store = open();
            let (c, size) = store.put_blob(config).unwrap();
            let desc = Descriptor {
                media_type: MEDIA_OCI_CONFIG.into(),
                digest: c.to_string(),
                size,
                platform: None,
                annotations: BTreeMap::new(),
            };
            let m = Manifest { schema_version: 2, media_type: None, config: desc, layers: vec![] };
            store.put_blob(&serde_json::to_vec(&m).unwrap()).unwrap().0
        };
        let (m1, m2) = (manifest(b"{}"), manifest(b"{\"architecture\":\"amd64\"}"));
        let (reader, writer) = (open(), open());
        let name = Reference::parse("app:v1").unwrap();
        assert!(matches!(reader.resolve("app:v1"), Err(ImageError::NotFound(_))));
        writer.tag(&name, &m1).unwrap();
        assert_eq!(reader.resolve("app:v1").unwrap().manifest_digest, m1);
        // From memory now, until the index is rewritten: by the other store here.
        assert_eq!(reader.resolve("app:v1").unwrap().manifest_digest, m1);
        writer.tag(&name, &m2).unwrap();
        assert_eq!(reader.resolve("app:v1").unwrap().manifest_digest, m2);
        writer.untag(&name).unwrap();
        assert!(matches!(reader.resolve("app:v1"), Err(ImageError::NotFound(_))));
    }

    /// The whiteout calls name paths inside the temporary unpack folder; recover them.
    fn out_tmp_parent(os: &FakeOs, suffix: &str) -> PathBuf {
        os.calls()
            .into_iter()
            .find_map(|c| match c {
                Call::Whiteout(p) | Call::Opaque(p) if p.ends_with(suffix) => Some(p),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn two_stores_on_one_folder_lose_no_tags() {
        let dir = tempfile::tempdir().unwrap();
        let open = || ImageStore::open(dir.path(), Arc::new(FakeOs::new("", vec![]))).unwrap();
        let (config, size) = open().put_blob(b"{}").unwrap();
        let desc = Descriptor {
            media_type: MEDIA_OCI_CONFIG.into(),
            digest: config.to_string(),
            size,
            platform: None,
            annotations: BTreeMap::new(),
        };
        let manifest = Manifest { schema_version: 2, media_type: None, config: desc, layers: vec![] };
        let (m, _) = open().put_blob(&serde_json::to_vec(&manifest).unwrap()).unwrap();
        // Separate store objects share no mutex: only the file lock keeps index.json whole.
        std::thread::scope(|scope| {
            for t in 0..2 {
                let (store, m) = (open(), m.clone());
                scope.spawn(move || {
                    for i in 0..25 {
                        store.tag(&Reference::parse(&format!("img{t}:v{i}")).unwrap(), &m).unwrap();
                    }
                });
            }
        });
        assert_eq!(open().list().unwrap()[0].names.len(), 50);
    }

    #[test]
    fn a_whiteout_through_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let os = Arc::new(FakeOs::new("", vec![]));
        let store = ImageStore::open(&dir.path().join("store"), os.clone()).unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("passwd"), b"keep").unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "etc", &victim).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_mode(0o644);
        b.append_data(&mut h, "etc/.wh.passwd", std::io::empty()).unwrap();
        let (digest, size) = store.put_blob(&b.into_inner().unwrap()).unwrap();
        let desc = Descriptor {
            media_type: MEDIA_OCI_LAYER_TAR.into(),
            digest: digest.to_string(),
            size,
            platform: None,
            annotations: BTreeMap::new(),
        };
        assert!(matches!(store.unpack_layer(&desc), Err(ImageError::UnsafePath(_))));
        assert!(os.calls().is_empty(), "no whiteout was made: {:?}", os.calls());
        assert_eq!(std::fs::read(victim.join("passwd")).unwrap(), b"keep");
        assert!(!store.root().join("layers/sha256").join(digest.hex()).exists());
    }

    #[test]
    fn refuses_entries_that_escape_and_corrupt_blobs() {
        assert!(safe_relative(Path::new("../etc/passwd")).is_err());
        assert!(safe_relative(Path::new("/etc/passwd")).is_err());
        assert_eq!(safe_relative(Path::new("./a/b")).unwrap(), PathBuf::from("a/b"));
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path(), Arc::new(FakeOs::new("", vec![]))).unwrap();
        let mut w = store.begin_blob().unwrap();
        w.write_all(b"hello").unwrap();
        let wrong = Digest::from_sha256(&Sha256::digest(b"other"));
        assert!(matches!(w.commit(Some(&wrong)), Err(ImageError::DigestMismatch { .. })));
        assert!(!store.has_blob(&wrong));
    }
}
