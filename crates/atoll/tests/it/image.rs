//! `atoll image`: build the local busybox image, import archives, list.

use std::path::Path;
use std::process::Command;

fn atoll(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_atoll")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn image_build_busybox_import_and_list() {
    assert!(Path::new("/bin/busybox").is_file(), "/bin/busybox is missing: apt-get install busybox-static");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (ok, out, err) = atoll(&["image", "build-busybox", "--data-dir", data]);
    assert!(ok, "{err}");
    assert!(out.starts_with("imported docker.io/library/busybox:latest sha256:"), "{out}");
    // The store is itself an OCI layout: archive it and import it under a second name.
    let archive = dir.path().join("store.tar");
    let status = Command::new("tar")
        .args([
            "-C",
            &format!("{data}/agent/images"),
            "-cf",
            archive.to_str().unwrap(),
            "oci-layout",
            "index.json",
            "blobs",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let (ok, out, err) =
        atoll(&["image", "import", archive.to_str().unwrap(), "--name", "busybox:1.36", "--data-dir", data]);
    assert!(ok, "{err}");
    assert!(out.contains("docker.io/library/busybox:1.36"), "{out}");
    let (ok, out, err) = atoll(&["image", "list", "--data-dir", data]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("NAME"));
    assert!(out.contains("docker.io/library/busybox:latest") && out.contains("docker.io/library/busybox:1.36"));
    let (ok, out, err) = atoll(&["image", "rm", "busybox:1.36", "--data-dir", data]);
    assert!(ok && out.trim() == "untagged docker.io/library/busybox:1.36", "{out}{err}");
    let (ok, _, err) = atoll(&["image", "rm", "busybox:1.36", "--data-dir", data]);
    assert!(!ok && err.contains("no image named"), "{err}");
    // Bad input: a clear error and a failing exit code, no panic.
    let (ok, _, err) = atoll(&["image", "import", "/etc/hostname", "--data-dir", data]);
    assert!(!ok && err.starts_with("atoll: importing /etc/hostname"), "{err}");
    let (ok, _, err) = atoll(&["image", "import", archive.to_str().unwrap(), "--name", "Bad Name", "--data-dir", data]);
    assert!(!ok && err.contains("invalid image reference"), "{err}");
}
