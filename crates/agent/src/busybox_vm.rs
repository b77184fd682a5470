//! A small VM image (`busybox-vm`) made on the node with no network: a Linux kernel (the
//! host's or Debian's cloud kernel, extracted by `scripts/lib.sh`), an initramfs holding a
//! static busybox, the virtio modules the kernel needs, and our guest init, plus a small
//! ext4 data disk. The result is an OCI image layout like [`crate::busybox`]'s, whose one
//! layer carries the files at the paths the VM runtime reads ([`crate::runtime::vm::KERNEL`],
//! [`crate::runtime::vm::INITRD`], [`crate::runtime::vm::DISK`]), so VM images are imported,
//! listed, named and collected by the same image store as container images.
//!
//! The guest init (`/init`, a busybox shell script): mounts the pseudo file systems, loads
//! the modules, mounts the data disk (`/dev/vda`) at `/mnt/disk` if there is one, starts
//! busybox `acpid` so the ACPI power button (QMP `system_powerdown`) powers the guest off
//! cleanly, installs root's credentials from fw_cfg (`opt/atoll/credentials`:
//! `/root/.ssh/authorized_keys` and the password hash in `/etc/shadow`, both 0600), starts
//! the guest agent (`atoll-guest`, when the image carries it; it serves `kubectl exec` over
//! its virtio-serial port), prints [`crate::runtime::vm::READY_MARKER`] on the serial
//! console, then runs the user data qemu passed in through fw_cfg (`opt/atoll/user-data`)
//! with its output on the console, and idles. A guest that powers itself off ends the VM
//! (qemu runs `-no-reboot`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::images::ContainerConfig;
use crate::os::Os;
use crate::runtime::vm::{DISK, DISK_QCOW2, INITRD, KERNEL, READY_MARKER, USER_DATA_FW_CFG};
use crate::vm_credentials::FW_CFG_NAME as CREDENTIALS_FW_CFG;

#[derive(Debug, thiserror::Error)]
pub enum VmImageError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{0} is not a static busybox (install busybox-static)")]
    NotBusybox(PathBuf),
    #[error("kernel module {name}.ko not found under {dir}")]
    NoModule { name: String, dir: PathBuf },
    #[error("making the data disk: {0}")]
    Disk(String),
}

/// Modules loaded in this order (virtio's dependencies first; Debian's cloud kernel builds
/// them as modules): PCI virtio for the disk, the console driver for the guest agent's port, the ACPI button for `system_powerdown`,
/// evdev so acpid sees it, fw_cfg for the user data.
pub const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "button",
    "evdev",
    "qemu_fw_cfg",
];

/// Size of the data disk in the image (sparse where the file system allows).
const DISK_MIB: u64 = 16;

fn init_script() -> String {
    let modules = MODULES.join(" ");
    format!(
        r#"#!/bin/busybox sh
# Atoll's guest init: see crates/agent/src/busybox_vm.rs.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec 0</dev/console 1>/dev/console 2>&1
for m in {modules}; do insmod /lib/modules/$m.ko 2>/dev/null; done
if [ -b /dev/vda ]; then
  mount -t ext4 /dev/vda /mnt/disk && echo "atoll-guest: disk mounted at /mnt/disk"
fi
acpid -c /etc/acpi -l /dev/null
cr=/sys/firmware/qemu_fw_cfg/by_name/{CREDENTIALS_FW_CFG}/raw
if [ -f $cr ]; then
  umask 077
  if grep -q '^key ' $cr; then
    mkdir -p /root/.ssh
    sed -n 's/^key //p' $cr > /root/.ssh/authorized_keys
    chmod 600 /root/.ssh/authorized_keys
  fi
  h=$(sed -n 's/^password //p' $cr)
  if [ -n "$h" ]; then
    printf 'root:%s:20000:0:99999:7:::\n' "$h" > /etc/shadow
    chmod 600 /etc/shadow
  fi
  umask 022
  echo "atoll-guest: credentials installed"
fi
# The guest agent serves `kubectl exec` over its virtio-serial port; the init stays PID 1.
if [ -x /bin/atoll-guest ]; then /bin/atoll-guest </dev/null >/dev/console 2>&1 & fi
echo "{READY_MARKER}"
ud=/sys/firmware/qemu_fw_cfg/by_name/{USER_DATA_FW_CFG}/raw
if [ -f $ud ]; then
  cat $ud > /run/user-data
  chmod 755 /run/user-data
  if head -c 2 /run/user-data | grep -q '#!'; then /run/user-data; else sh /run/user-data; fi
  echo "atoll-guest: user data exited with $?"
fi
while :; do sleep 3600; done
"#
    )
}

/// What the power button runs: an orderly power-off (the init is a script, so busybox
/// `poweroff` without `-f` would have no init to ask).
const POWEROFF: &str = "#!/bin/sh\necho 'atoll-guest: powering off'\nsync\numount /mnt/disk 2>/dev/null\npoweroff -f\n";

/// A cpio archive in the "newc" format the kernel unpacks as an initramfs.
#[derive(Default)]
pub(crate) struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub(crate) fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    pub(crate) fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    pub(crate) fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, (0, 0), data);
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

fn read(path: &Path) -> Result<Vec<u8>, VmImageError> {
    std::fs::read(path).map_err(|source| VmImageError::Io { what: "reading", path: path.to_owned(), source })
}

/// Finds `<name>.ko` below `dir` (a kernel's `lib/modules/<version>`).
pub(crate) fn find_module(dir: &Path, name: &str) -> Option<PathBuf> {
    let file = format!("{name}.ko");
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else if entry.file_name().to_str() == Some(file.as_str()) {
                return Some(path);
            }
        }
    }
    None
}

/// The gzip-compressed initramfs: busybox, the modules found in `modules` (a kernel built
/// with them built in needs none: missing ones are skipped only when `modules` is `None`),
/// the init and the power-off script, and `extra` files (the guest agent and its
/// libraries, at their paths without the leading `/`).
pub fn initramfs(busybox: &[u8], modules: Option<&Path>, extra: &[(String, Vec<u8>)]) -> Result<Vec<u8>, VmImageError> {
    let mut cpio = Cpio::default();
    let mut made: Vec<String> = Vec::new();
    for d in ["bin", "dev", "etc", "etc/acpi", "lib", "lib/modules", "mnt", "mnt/disk", "proc", "run", "sys", "tmp"] {
        cpio.dir(d);
        made.push(d.into());
    }
    cpio.entry("root", 0o040700, (0, 0), &[]);
    // root's account, whose password the credentials set (locked until then).
    cpio.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    cpio.file("etc/shadow", 0o600, b"root:*:20000:0:99999:7:::\n");
    for (path, bytes) in extra {
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            let d = parts[..i].join("/");
            if !made.contains(&d) {
                cpio.dir(&d);
                made.push(d);
            }
        }
        cpio.file(path, 0o755, bytes);
    }
    // The kernel opens the console before our init mounts devtmpfs.
    cpio.entry("dev/console", 0o020600, (5, 1), &[]);
    cpio.file("bin/busybox", 0o755, busybox);
    cpio.file("init", 0o755, init_script().as_bytes());
    cpio.file("etc/poweroff", 0o755, POWEROFF.as_bytes());
    // busybox acpid runs `<conf dir>/<event>/*`-style actions from its -c folder: the
    // power button's event names map to our power-off script.
    cpio.dir("etc/acpi/PWRF");
    cpio.file("etc/acpi/PWRF/00000080", 0o755, POWEROFF.as_bytes());
    cpio.dir("etc/acpi/PWRB");
    cpio.file("etc/acpi/PWRB/00000080", 0o755, POWEROFF.as_bytes());
    if let Some(dir) = modules {
        for name in MODULES {
            let path = find_module(dir, name)
                .ok_or_else(|| VmImageError::NoModule { name: name.to_string(), dir: dir.into() })?;
            cpio.file(&format!("lib/modules/{name}.ko"), 0o644, &read(&path)?);
        }
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let io = |source| VmImageError::Io { what: "compressing", path: "initramfs".into(), source };
    gz.write_all(&cpio.finish()).map_err(io)?;
    gz.finish().map_err(io)
}

/// The guest agent (stripped of debug info when `strip` works) and the shared libraries
/// `ldd` names for it, as initramfs entries.
pub fn guest_agent_files(os: &dyn Os, guest: &Path, work: &Path) -> Result<Vec<(String, Vec<u8>)>, VmImageError> {
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| VmImageError::Io { what, path, source }
    };
    std::fs::create_dir_all(work).map_err(io("creating", work))?;
    let stripped = work.join("atoll-guest");
    let strip = os.run(Path::new("strip"), &["-s".into(), "-o".into(), stripped.clone().into(), guest.into()]);
    let agent = if strip.is_ok_and(|o| o.success) { stripped } else { guest.to_owned() };
    let mut out = vec![("bin/atoll-guest".to_string(), read(&agent)?)];
    // A static agent has no libraries (ldd says so and fails).
    if let Ok(ldd) = os.run(Path::new("ldd"), &[guest.into()])
        && ldd.success
    {
        for lib in crate::sandbox_image::ldd_paths(&ldd.stdout) {
            out.push((lib.to_string_lossy().trim_start_matches('/').to_string(), read(&lib)?));
        }
    }
    Ok(out)
}

/// A small ext4 data disk (raw) with a README, made with `mke2fs -d` through `os`.
fn data_disk(os: &dyn Os, work: &Path) -> Result<Vec<u8>, VmImageError> {
    let content = work.join("disk-content");
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| VmImageError::Io { what, path, source }
    };
    std::fs::create_dir_all(&content).map_err(io("creating", &content))?;
    std::fs::write(content.join("README"), "the busybox-vm data disk\n").map_err(io("writing", &content))?;
    let disk = work.join("disk.img");
    let out = os
        .run(
            Path::new("mke2fs"),
            &[
                "-q".into(),
                "-F".into(),
                "-t".into(),
                "ext4".into(),
                "-L".into(),
                "atoll-disk".into(),
                "-d".into(),
                content.into_os_string(),
                disk.clone().into_os_string(),
                format!("{DISK_MIB}M").into(),
            ],
        )
        .map_err(|e| VmImageError::Disk(e.to_string()))?;
    if !out.success {
        return Err(VmImageError::Disk(out.stderr));
    }
    read(&disk)
}

/// Builds the VM image layout for `ref_name` in `out` from a static busybox, a kernel and
/// its modules folder, and the guest agent (`atoll-guest`) unless `guest` is `None`;
/// `work` is scratch space. Returns the manifest digest.
#[allow(clippy::too_many_arguments)]
pub fn build_layout(
    os: &dyn Os,
    busybox: &Path,
    kernel: &Path,
    modules: Option<&Path>,
    guest: Option<&Path>,
    work: &Path,
    out: &Path,
    ref_name: &str,
) -> Result<crate::reference::Digest, VmImageError> {
    let binary = read(busybox)?;
    if !crate::busybox::is_static_elf64(&binary) {
        return Err(VmImageError::NotBusybox(busybox.to_owned()));
    }
    let extra = match guest {
        Some(g) => guest_agent_files(os, g, &work.join("guest"))?,
        None => Vec::new(),
    };
    let initrd = initramfs(&binary, modules, &extra)?;
    let kernel_bytes = read(kernel)?;
    let disk = data_disk(os, work)?;
    let io = |source| VmImageError::Io { what: "building the layer of", path: out.to_owned(), source };
    let mut b = tar::Builder::new(Vec::new());
    let dir = crate::busybox::header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut dir.clone(), "vm/", std::io::empty()).map_err(io)?;
    for (path, bytes) in [(KERNEL, &kernel_bytes), (INITRD, &initrd), (DISK, &disk)] {
        let mut h = crate::busybox::header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
        b.append_data(&mut h, path, bytes.as_slice()).map_err(io)?;
    }
    let tar = b.into_inner().map_err(io)?;
    crate::busybox::write_layout(out, ref_name, &tar, ContainerConfig::default(), "atoll image build-busybox-vm")
        .map_err(io)
}

/// A disk-only VM image: the layout for `ref_name` in `out` whose one layer holds the raw
/// or qcow2 `disk` (told apart by qcow2's magic) at [`DISK`] or [`DISK_QCOW2`]. Its VMs boot
/// the disk through the firmware, with no kernel of ours. Returns the manifest digest.
pub fn disk_layout(disk: &Path, out: &Path, ref_name: &str) -> Result<crate::reference::Digest, VmImageError> {
    let bytes = read(disk)?;
    let at = if bytes.starts_with(b"QFI\xfb") { DISK_QCOW2 } else { DISK };
    let io = |source| VmImageError::Io { what: "building the layer of", path: out.to_owned(), source };
    let mut b = tar::Builder::new(Vec::new());
    let dir = crate::busybox::header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut dir.clone(), "vm/", std::io::empty()).map_err(io)?;
    let mut h = crate::busybox::header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
    b.append_data(&mut h, at, bytes.as_slice()).map_err(io)?;
    let tar = b.into_inner().map_err(io)?;
    crate::busybox::write_layout(out, ref_name, &tar, ContainerConfig::default(), "atoll image import --vm-disk")
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("init", 0o755, b"#!/bin/sh\n");
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("TRAILER!!!"));
        // The second header starts on a 4-byte boundary right after "bin\0" + padding.
        let second = text.find("070701").and_then(|first| text[first + 6..].find("070701").map(|i| i + first + 6));
        assert_eq!(second.map(|i| i % 4), Some(0));
    }

    #[test]
    fn init_prints_the_marker_and_runs_user_data() {
        let init = init_script();
        assert!(init.contains(READY_MARKER));
        assert!(init.contains(USER_DATA_FW_CFG));
        assert!(init.starts_with("#!/bin/busybox sh\n"));
        // Credentials and the agent come before the marker: once a pod is ready, both are in.
        let at = |needle: &str| init.find(needle).unwrap_or_else(|| panic!("{needle} missing from the init"));
        assert!(at(CREDENTIALS_FW_CFG) < at(READY_MARKER));
        assert!(at("/bin/atoll-guest </dev/null") < at(READY_MARKER));
        assert!(init.contains("chmod 600 /root/.ssh/authorized_keys") && init.contains("chmod 600 /etc/shadow"));
    }

    #[test]
    fn a_disk_file_becomes_a_one_layer_vm_image() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, qcow) = (dir.path().join("d.raw"), dir.path().join("d.qcow2"));
        std::fs::write(&raw, [0u8; 1024]).unwrap();
        std::fs::write(&qcow, b"QFI\xfb and the rest").unwrap();
        for (disk, at) in [(&raw, DISK), (&qcow, DISK_QCOW2)] {
            let out = dir.path().join(format!("layout-{at}").replace('/', "-"));
            disk_layout(disk, &out, "d:v1").unwrap();
            let index = std::fs::read_to_string(out.join("index.json")).unwrap();
            assert!(index.contains("d:v1"), "{index}");
            // The one layer holds the disk where the runtime looks for it.
            let blobs = out.join("blobs/sha256");
            let found = std::fs::read_dir(&blobs).unwrap().flatten().any(|b| {
                let bytes = std::fs::read(b.path()).unwrap();
                let mut gz = flate2::read::GzDecoder::new(&bytes[..]);
                let mut tar = Vec::new();
                std::io::Read::read_to_end(&mut gz, &mut tar).is_ok()
                    && tar::Archive::new(&tar[..])
                        .entries()
                        .unwrap()
                        .flatten()
                        .any(|e| e.path().unwrap().to_string_lossy() == at)
            });
            assert!(found, "no layer with {at}");
        }
    }
}
