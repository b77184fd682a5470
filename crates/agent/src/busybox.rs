//! A small `busybox` image made on the node from a statically linked busybox binary
//! (Debian's busybox-static), so a first pod runs with no network. The output is a plain
//! OCI image layout folder, which [`crate::images::ImageStore::import`] takes like any
//! other. The build is deterministic: the same binary gives the same digests.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::images::{
    ANNOTATION_REF_NAME, ContainerConfig, Descriptor, Index, MEDIA_OCI_CONFIG, MEDIA_OCI_INDEX, MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_MANIFEST, Manifest, host_platform,
};
use crate::reference::Digest;

#[derive(Debug, thiserror::Error)]
pub enum BusyboxError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: std::path::PathBuf, source: std::io::Error },
    #[error("{0} is not a static busybox (install busybox-static)")]
    NotBusybox(std::path::PathBuf),
}

/// The applets linked into the image; enough for shells, probes and our tests.
pub const APPLETS: &[&str] = &[
    "sh", "ash", "cat", "chmod", "cp", "date", "dd", "df", "echo", "env", "false", "grep", "head", "hostname", "id",
    "kill", "ln", "ls", "mkdir", "mount", "mv", "nc", "ping", "printenv", "printf", "ps", "pwd", "readlink", "rm",
    "sed", "sleep", "sort", "tail", "tar", "tee", "test", "top", "touch", "true", "uname", "wc", "wget", "whoami",
    "yes",
];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\n";
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(crate) fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// The one layer's uncompressed tar: the binary, its applet symlinks, /etc files and the
/// usual empty folders (mount points for the runtime).
fn layer_tar(busybox: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o755),
        ("root", 0o700),
        ("sys", 0o755),
    ]
    .into_iter()
    .chain([("tmp", 0o1777), ("usr", 0o755), ("usr/bin", 0o755), ("var", 0o755)])
    {
        b.append_data(&mut header(tar::EntryType::Directory, mode, 0), format!("{dir}/"), std::io::empty())?;
    }
    b.append_data(&mut header(tar::EntryType::Regular, 0o755, busybox.len() as u64), "bin/busybox", busybox)?;
    for applet in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    for (path, text) in [("etc/passwd", PASSWD), ("etc/group", GROUP), ("etc/hostname", "busybox\n")] {
        b.append_data(&mut header(tar::EntryType::Regular, 0o644, text.len() as u64), path, text.as_bytes())?;
    }
    b.into_inner()
}

/// A 64-bit little-endian ELF executable without an interpreter (`PT_INTERP`), i.e.
/// statically linked.
pub(crate) fn is_static_elf64(b: &[u8]) -> bool {
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]) as usize);
    let u64_at = |o: usize| b.get(o..o + 8).map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])) as usize);
    if !b.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        b.get(at..at + 4).is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != 3)
    })
}

fn sha(bytes: &[u8]) -> Digest {
    Digest::from_sha256(&Sha256::digest(bytes))
}

fn write(dir: &Path, rel: &str, bytes: &[u8]) -> std::io::Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, bytes)
}

fn descriptor(media_type: &str, digest: &Digest, size: usize) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: digest.to_string(),
        size: size as u64,
        platform: None,
        annotations: BTreeMap::new(),
    }
}

/// Write an OCI image layout for `ref_name` into `out` (created if missing) from the
/// busybox binary at `busybox`. Returns the manifest's digest.
pub fn build_layout(busybox: &Path, out: &Path, ref_name: &str) -> Result<Digest, BusyboxError> {
    let binary = std::fs::read(busybox).map_err(|source| BusyboxError::Io {
        what: "reading",
        path: busybox.to_owned(),
        source,
    })?;
    // A dynamically linked busybox would not run in an image with no libc.
    if !is_static_elf64(&binary) {
        return Err(BusyboxError::NotBusybox(busybox.to_owned()));
    }
    let io_err = |source| BusyboxError::Io { what: "building the layer of", path: busybox.to_owned(), source };
    let tar = layer_tar(&binary).map_err(io_err)?;
    let config = ContainerConfig {
        env: Some(vec![PATH_ENV.to_owned()]),
        cmd: Some(vec!["sh".to_owned()]),
        ..ContainerConfig::default()
    };
    write_layout(out, ref_name, &tar, config, "atoll image build-busybox").map_err(|source| BusyboxError::Io {
        what: "writing the layout of",
        path: busybox.to_owned(),
        source,
    })
}

/// Write a one-layer OCI image layout for `ref_name` into `out` (created if missing) from
/// the layer's uncompressed tar. Deterministic: the same tar gives the same digests.
/// Returns the manifest's digest.
pub fn write_layout(
    out: &Path,
    ref_name: &str,
    tar: &[u8],
    config: ContainerConfig,
    created_by: &str,
) -> std::io::Result<Digest> {
    let diff_id = sha(tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(tar)?;
    let layer = gz.finish()?;
    let layer_digest = sha(&layer);

    let (os, arch) = host_platform();
    let config = serde_json::json!({
        "architecture": arch,
        "os": os,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        "history": [{"created_by": created_by}],
    });
    let config = serde_json::to_vec(&config).unwrap_or_default();
    let config_digest = sha(&config);
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_OCI_MANIFEST.into()),
        config: descriptor(MEDIA_OCI_CONFIG, &config_digest, config.len()),
        layers: vec![descriptor(MEDIA_OCI_LAYER_GZIP, &layer_digest, layer.len())],
    };
    let manifest = serde_json::to_vec(&manifest).unwrap_or_default();
    let manifest_digest = sha(&manifest);
    let mut entry = descriptor(MEDIA_OCI_MANIFEST, &manifest_digest, manifest.len());
    entry.annotations.insert(ANNOTATION_REF_NAME.into(), ref_name.into());
    let index = Index { schema_version: 2, media_type: Some(MEDIA_OCI_INDEX.into()), manifests: vec![entry] };

    for (digest, bytes) in [(&layer_digest, &layer), (&config_digest, &config), (&manifest_digest, &manifest)] {
        write(out, &format!("blobs/sha256/{}", digest.hex()), bytes)?;
    }
    write(out, "index.json", &serde_json::to_vec(&index).unwrap_or_default())?;
    write(out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(manifest_digest)
}
