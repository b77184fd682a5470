use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use agent::images::{Descriptor, ImageError, MEDIA_OCI_LAYER_TAR, MEDIA_OCI_MANIFEST, Manifest};
use agent::os::Os;
use agent::reference::Digest;

use crate::{BUSYBOX, Node};

fn blob_count(node: &Node) -> usize {
    std::fs::read_dir(node.images.root().join("blobs/sha256")).unwrap().count()
}

fn tar_dir(src: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.follow_symlinks(false);
    b.append_dir_all(".", src).unwrap();
    b.finish().unwrap();
}

#[test]
fn busybox_layout_imports_and_resolves_by_every_reference_form() {
    let node = Node::setup();
    let image = node.busybox();
    assert_eq!(image.names, vec!["docker.io/library/busybox:latest".to_string()]);
    assert_eq!(blob_count(&node), 3, "layer, config, manifest");
    let digest = image.manifest_digest.to_string();
    for r in [
        "busybox".to_string(),
        "busybox:latest".into(),
        "docker.io/library/busybox:latest".into(),
        format!("busybox@{digest}"),
        digest.clone(),
        image.id.to_string(),
    ] {
        assert_eq!(node.images.resolve(&r).unwrap().manifest_digest, image.manifest_digest, "{r}");
    }
    assert!(matches!(node.images.resolve("busybox:1.36"), Err(ImageError::NotFound(_))));
    assert!(matches!(node.images.resolve("Not A Ref"), Err(ImageError::Reference(_))));

    // The same image again as an OCI archive (a tar of the layout) under another name:
    // nothing new is stored, the manifest gets a second name.
    let archive = node.dir.path().join("busybox.tar");
    tar_dir(&node.dir.path().join("busybox-layout"), &archive);
    let again = node.images.import(&archive, Some("docker.io/library/busybox:1.36")).unwrap();
    assert_eq!(again[0].manifest_digest, image.manifest_digest);
    assert_eq!(blob_count(&node), 3);
    let listed = node.images.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].names.len(), 2);
    assert_eq!(node.images.resolve("busybox:1.36").unwrap().manifest_digest, image.manifest_digest);

    // Layers unpack once into a tree that holds the binary and its applets.
    let dirs = node.images.layer_dirs(&image).unwrap();
    assert_eq!(dirs.len(), 1);
    assert_eq!(std::fs::read(dirs[0].join("bin/busybox")).unwrap(), std::fs::read(BUSYBOX).unwrap());
    assert_eq!(std::fs::read_link(dirs[0].join("bin/sh")).unwrap(), Path::new("busybox"));
    assert_eq!(node.images.layer_dirs(&image).unwrap(), dirs);
}

#[test]
fn docker_archives_share_layers_with_oci_images() {
    let node = Node::setup();
    let image = node.busybox();
    // `docker save` shape: manifest.json naming a config file and layer tars.
    let dir = node.dir.path().join("docker");
    std::fs::create_dir_all(dir.join("layer1")).unwrap();
    let layer = &image.manifest.layers[0];
    let layer_digest = Digest::parse(&layer.digest).unwrap();
    std::fs::copy(node.images.blob_path(&layer_digest), dir.join("layer1/layer.tar")).unwrap();
    std::fs::copy(node.images.blob_path(&image.id), dir.join("config.json")).unwrap();
    let manifest =
        r#"[{"Config":"config.json","RepoTags":["example.com/tools/box:v1"],"Layers":["layer1/layer.tar"]}]"#;
    std::fs::write(dir.join("manifest.json"), manifest).unwrap();
    let archive = node.dir.path().join("docker.tar.gz");
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&archive).unwrap(), flate2::Compression::fast());
    {
        let mut b = tar::Builder::new(&mut gz);
        b.append_dir_all(".", &dir).unwrap();
        b.finish().unwrap();
    }
    gz.finish().unwrap().flush().unwrap();
    let imported = node.images.import(&archive, None).unwrap();
    assert_eq!(imported[0].names, vec!["example.com/tools/box:v1".to_string()]);
    assert_eq!(imported[0].manifest.layers[0].digest, layer.digest, "the layer blob is shared");
    // Same config, same layer, same manifest fields: the very same image, stored once.
    assert_eq!(imported[0].manifest_digest, image.manifest_digest);
    assert_eq!(blob_count(&node), 3);
    assert_eq!(node.images.layer_dirs(&imported[0]).unwrap(), node.images.layer_dirs(&image).unwrap());
    // An archive whose manifest points (through a symlink) at a host file is refused.
    std::os::unix::fs::symlink("/etc/hostname", dir.join("evil.json")).unwrap();
    let evil = r#"[{"Config":"evil.json","RepoTags":["evil:1"],"Layers":["layer1/layer.tar"]}]"#;
    std::fs::write(dir.join("manifest.json"), evil).unwrap();
    let evil_tar = node.dir.path().join("evil.tar");
    tar_dir(&dir, &evil_tar);
    assert!(matches!(node.images.import(&evil_tar, None), Err(ImageError::UnsafePath(_))));
    // Garbage is refused with a clear error.
    let junk = node.dir.path().join("junk.tar");
    std::fs::write(&junk, vec![0u8; 1024]).unwrap();
    assert!(matches!(node.images.import(&junk, None), Err(ImageError::UnknownFormat(_))));
}

fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn whiteouts_hide_lower_files_in_the_mounted_rootfs() {
    let node = Node::setup();
    let base = node.busybox();
    // A second layer deleting /etc/hostname and making /etc opaque-free changes.
    let top =
        layer_tar(&[("etc/.wh.hostname", b""), ("data/new", b"n"), ("bin/.wh..wh..opq", b""), ("bin/only", b"o")]);
    let (top_digest, top_size) = node.images.put_blob(&top).unwrap();
    let mut manifest: Manifest = base.manifest.clone();
    manifest.layers.push(Descriptor {
        media_type: MEDIA_OCI_LAYER_TAR.into(),
        digest: top_digest.to_string(),
        size: top_size,
        platform: None,
        annotations: BTreeMap::new(),
    });
    manifest.media_type = Some(MEDIA_OCI_MANIFEST.into());
    let (m, _) = node.images.put_blob(&serde_json::to_vec(&manifest).unwrap()).unwrap();
    node.images.tag(&agent::reference::Reference::parse("whiteout:test").unwrap(), &m).unwrap();
    let image = node.images.resolve("whiteout:test").unwrap();
    let layers = node.images.layer_dirs(&image).unwrap();
    let root = node.dir.path().join("mnt");
    let (upper, work) = (node.dir.path().join("upper"), node.dir.path().join("work"));
    for d in [&root, &upper, &work] {
        std::fs::create_dir_all(d).unwrap();
    }
    let lower: Vec<_> = layers.iter().rev().cloned().collect();
    node.os.mount_overlay(&lower, &upper, &work, &root).unwrap();
    let seen = (root.join("etc/passwd").exists(), root.join("etc/hostname").exists(), root.join("data/new").exists());
    let bin: Vec<String> =
        std::fs::read_dir(root.join("bin")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    node.os.unmount(&root).unwrap();
    assert_eq!(seen, (true, false, true));
    assert_eq!(bin, vec!["only".to_string()], "the opaque /bin hides busybox's applets");
}

#[test]
fn gc_keeps_named_and_in_use_content_only() {
    let node = Node::setup();
    let image = node.busybox();
    let layers = node.images.layer_dirs(&image).unwrap();
    let (stray, _) = node.images.put_blob(b"nobody points here").unwrap();
    assert_eq!(node.images.gc(&[]).unwrap(), (1, 0));
    assert!(!node.images.has_blob(&stray));
    assert!(layers[0].exists() && node.images.has_blob(&image.manifest_digest));
    // Untagged, but a container still uses the layer: the folder stays, the blobs go.
    assert!(node.images.untag(&agent::reference::Reference::parse("busybox").unwrap()).unwrap());
    assert_eq!(node.images.gc(&layers).unwrap(), (3, 0));
    assert!(layers[0].exists());
    assert_eq!(node.images.gc(&[]).unwrap(), (0, 1));
    assert!(!layers[0].exists());
    assert!(node.images.list().unwrap().is_empty());
}
