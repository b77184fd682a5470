//! What a VM sandbox boots and mounts, made on the node:
//!
//! - the guest kernel ([`GuestKernel::find`]): our own minimal build (`scripts/lib.sh`
//!   `setup_guest_kernel`: everything built in, booted as an uncompressed vmlinux through
//!   its PVH entry), or, where it was not built, Debian's cloud kernel with its modules
//!   (about three times the boot CPU under TCG: BENCHMARKS.md).
//! - the guest initramfs ([`guest_initramfs`]): a static busybox, the guest agent
//!   (`atoll-guest`) with the shared libraries `ldd` names for it, for Debian's kernel the
//!   few modules a microVM needs (virtio over MMIO, the block and console drivers,
//!   overlayfs; their signatures stripped, since checking them under TCG costs boot time)
//!   and a tiny init script that mounts the pseudo file systems, loads the modules and
//!   `exec`s the agent. Uncompressed: unpacking gzip under TCG costs more than reading the
//!   bytes.
//! - a container image's root file system as an ext4 disk ([`rootfs_image`]): the layers
//!   merged (overlay whiteouts applied) into a scratch folder, then `mke2fs -d`, cached by
//!   the layer chain's digest. The guest mounts it read-only under an overlay whose upper
//!   layer is a tmpfs, so each container attempt starts from the image as containers do.

use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use crate::busybox_vm::{Cpio, find_module};
use crate::os::Os;

#[derive(Debug, thiserror::Error)]
pub enum SandboxImageError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("kernel module {name}.ko not found under {dir}")]
    NoModule { name: String, dir: PathBuf },
    #[error("{0} is not a static busybox (install busybox-static)")]
    NotBusybox(PathBuf),
    #[error("{tool}: {detail}")]
    Tool { tool: &'static str, detail: String },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SandboxImageError {
    let path = path.to_owned();
    move |source| SandboxImageError::Io { what, path, source }
}

/// Loaded in this order (dependencies first); `-M microvm` describes its virtio-mmio
/// devices in ACPI, so `virtio_mmio` needs no `device=` parameters.
pub const MODULES: &[&str] = &["virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console", "overlay"];

/// Where `scripts/lib.sh` (`setup_guest_kernel`) puts the minimal guest kernel.
pub const MINIMAL_KERNEL: &str = "/var/cache/atoll/kernel/sandbox/vmlinux";
/// Debian's cloud kernel and its modules (`setup_vm`), the fallback.
pub const DEBIAN_KERNEL: &str = "/var/cache/atoll/kernel/vmlinuz";
pub const DEBIAN_MODULES: &str = "/var/cache/atoll/kernel/modules";

/// The kernel sandboxes boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestKernel {
    pub kernel: PathBuf,
    /// `None`: the drivers are built in (our minimal kernel), so the initramfs loads none.
    pub modules: Option<PathBuf>,
}

impl GuestKernel {
    /// `ATOLL_SANDBOX_KERNEL` (a kernel with its drivers built in), else the `minimal`
    /// kernel ([`MINIMAL_KERNEL`]) if set-up built it, else Debian's (`ATOLL_VM_KERNEL`,
    /// `ATOLL_VM_MODULES`): the caller says so loudly, since it misses the start-time target.
    pub fn find(env: impl Fn(&str) -> Option<std::ffi::OsString>, minimal: &Path) -> GuestKernel {
        if let Some(k) = env("ATOLL_SANDBOX_KERNEL") {
            return GuestKernel { kernel: k.into(), modules: None };
        }
        if minimal.is_file() {
            return GuestKernel { kernel: minimal.into(), modules: None };
        }
        GuestKernel {
            kernel: env("ATOLL_VM_KERNEL").map_or_else(|| DEBIAN_KERNEL.into(), PathBuf::from),
            modules: Some(env("ATOLL_VM_MODULES").map_or_else(|| DEBIAN_MODULES.into(), PathBuf::from)),
        }
    }

    /// The kernel and its modules (if it needs any) are there.
    pub fn present(&self) -> bool {
        self.kernel.is_file() && self.modules.as_ref().is_none_or(|m| m.is_dir())
    }
}

/// The init: everything else is the agent's job. `atoll.hostname=` on the kernel command
/// line names the pod's host name.
fn init_script(modules: bool) -> String {
    let load = if modules {
        format!("for m in {}; do insmod /lib/modules/$m.ko; done\n", MODULES.join(" "))
    } else {
        String::new()
    };
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=755 tmpfs /run
{load}for a in $(cat /proc/cmdline); do case $a in atoll.hostname=*) hostname "${{a#*=}}";; esac; done
exec /bin/atoll-guest
"#
    )
}

/// A module file without its appended signature (`~Module signature appended~`), so
/// that the kernel does not hash it at load time (it loads unsigned modules, tainted).
pub fn strip_module_signature(mut ko: Vec<u8>) -> Vec<u8> {
    const MAGIC: &[u8] = b"~Module signature appended~\n";
    // struct module_signature: 12 bytes, its last 4 the signature's length (big-endian).
    if ko.ends_with(MAGIC) && ko.len() >= MAGIC.len() + 12 {
        let end = ko.len() - MAGIC.len();
        let len = u32::from_be_bytes([ko[end - 4], ko[end - 3], ko[end - 2], ko[end - 1]]) as usize;
        if let Some(cut) = end.checked_sub(12 + len) {
            ko.truncate(cut);
        }
    }
    ko
}

/// The absolute paths in `ldd` output: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`
/// and the loader's `/lib64/ld-linux-x86-64.so.2 (0x...)`.
pub fn ldd_paths(out: &str) -> Vec<PathBuf> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once("=>").map_or(l, |(_, p)| p.trim());
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn parents(cpio: &mut Cpio, made: &mut Vec<String>, path: &str) {
    let mut at = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()).collect::<Vec<_>>().split_last().map_or(&[][..], |x| x.1) {
        if !at.is_empty() {
            at.push('/');
        }
        at.push_str(part);
        if !made.contains(&at) {
            cpio.dir(&at);
            made.push(at.clone());
        }
    }
}

/// Builds the guest initramfs (a newc cpio archive, uncompressed); `modules` as in
/// [`GuestKernel`].
pub fn guest_initramfs(
    os: &dyn Os,
    guest: &Path,
    busybox: &Path,
    modules: Option<&Path>,
    work: &Path,
) -> Result<Vec<u8>, SandboxImageError> {
    let bb = std::fs::read(busybox).map_err(io("reading", busybox))?;
    if !crate::busybox::is_static_elf64(&bb) {
        return Err(SandboxImageError::NotBusybox(busybox.to_owned()));
    }
    // A debug build carries tens of MiB of debug info the guest has no use for.
    std::fs::create_dir_all(work).map_err(io("creating", work))?;
    let stripped = work.join("atoll-guest");
    let strip = os.run(Path::new("strip"), &["-s".into(), "-o".into(), stripped.clone().into(), guest.into()]);
    let agent_path = if strip.is_ok_and(|o| o.success) { stripped } else { guest.to_owned() };
    let agent = std::fs::read(&agent_path).map_err(io("reading", &agent_path))?;
    let ldd = os
        .run(Path::new("ldd"), &[guest.into()])
        .map_err(|e| SandboxImageError::Tool { tool: "ldd", detail: e.to_string() })?;
    let mut cpio = Cpio::default();
    let mut made: Vec<String> = Vec::new();
    for d in ["bin", "dev", "proc", "sys", "run", "tmp", "images", "lib", "lib/modules"] {
        cpio.dir(d);
        made.push(d.into());
    }
    cpio.entry("dev/console", 0o020600, (5, 1), &[]);
    cpio.file("bin/busybox", 0o755, &bb);
    cpio.file("bin/atoll-guest", 0o755, &agent);
    cpio.file("init", 0o755, init_script(modules.is_some()).as_bytes());
    // A static agent has no libraries (ldd says so and fails).
    if ldd.success {
        for lib in ldd_paths(&ldd.stdout) {
            let bytes = std::fs::read(&lib).map_err(io("reading", &lib))?;
            let name = lib.to_string_lossy().trim_start_matches('/').to_string();
            parents(&mut cpio, &mut made, &name);
            cpio.file(&name, 0o755, &bytes);
        }
    }
    for (dir, name) in modules.iter().flat_map(|dir| MODULES.iter().map(move |name| (dir, name))) {
        let path = find_module(dir, name)
            .ok_or_else(|| SandboxImageError::NoModule { name: name.to_string(), dir: dir.to_path_buf() })?;
        let ko = std::fs::read(&path).map_err(io("reading", &path))?;
        cpio.file(&format!("lib/modules/{name}.ko"), 0o644, &strip_module_signature(ko));
    }
    Ok(cpio.finish())
}

/// The cache key of a layer chain: the digest of the layer folders' names (each is its
/// layer's digest), bottom first.
pub fn chain_key(layers: &[PathBuf]) -> String {
    let mut h = sha2::Sha256::new();
    for l in layers {
        h.update(l.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The ext4 disk of an image's root file system in `cache`, made on first use.
pub fn rootfs_image(os: &dyn Os, layers: &[PathBuf], cache: &Path) -> Result<PathBuf, SandboxImageError> {
    let disk = cache.join(format!("{}.ext4", chain_key(layers)));
    if disk.is_file() {
        return Ok(disk);
    }
    std::fs::create_dir_all(cache).map_err(io("creating", cache))?;
    let scratch = tempfile::Builder::new().prefix("rootfs-").tempdir_in(cache).map_err(io("creating in", cache))?;
    let merged = scratch.path().join("root");
    std::fs::create_dir(&merged).map_err(io("creating", &merged))?;
    let mut bytes = 0u64;
    for layer in layers {
        merge_layer(layer, &merged, &mut bytes)?;
    }
    // Room for the file system's own metadata and small files' blocks.
    let kib = (bytes / 1024) * 3 / 2 + 16 * 1024;
    let tmp = scratch.path().join("disk.ext4");
    let args: Vec<OsString> = vec![
        "-q".into(),
        "-F".into(),
        "-t".into(),
        "ext4".into(),
        "-O".into(),
        "^has_journal".into(),
        "-i".into(),
        "4096".into(),
        "-L".into(),
        "atoll-rootfs".into(),
        "-d".into(),
        merged.into(),
        tmp.clone().into(),
        format!("{kib}k").into(),
    ];
    let out = os
        .run(Path::new("mke2fs"), &args)
        .map_err(|e| SandboxImageError::Tool { tool: "mke2fs", detail: e.to_string() })?;
    if !out.success {
        return Err(SandboxImageError::Tool { tool: "mke2fs", detail: out.stderr.trim().into() });
    }
    std::fs::rename(&tmp, &disk).map_err(io("renaming into", &disk))?;
    Ok(disk)
}

fn is_whiteout(m: &std::fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn opaque(dir: &Path) -> bool {
    rustix::fs::lgetxattr(dir, "trusted.overlay.opaque", &mut [0u8; 4]).is_ok_and(|n| n == 1)
}

fn remove(path: &Path) -> Result<(), SandboxImageError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(io("removing", path)),
        Ok(_) => std::fs::remove_file(path).map_err(io("removing", path)),
        Err(_) => Ok(()),
    }
}

/// Lays one unpacked layer (overlay format: whiteouts are 0/0 character devices, opaque
/// folders carry `trusted.overlay.opaque`) over `merged`. Files are hard links to the
/// layer's (mke2fs copies them); ownership and modes come along with the inode.
fn merge_layer(layer: &Path, merged: &Path, bytes: &mut u64) -> Result<(), SandboxImageError> {
    for entry in std::fs::read_dir(layer).map_err(io("reading", layer))? {
        let entry = entry.map_err(io("reading", layer))?;
        let (from, to) = (entry.path(), merged.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&from).map_err(io("reading", &from))?;
        if is_whiteout(&meta) {
            remove(&to)?;
        } else if meta.is_dir() {
            let existing = std::fs::symlink_metadata(&to).ok();
            if existing.as_ref().is_some_and(|m| !m.is_dir()) || opaque(&from) {
                remove(&to)?;
            }
            if !to.exists() {
                std::fs::create_dir(&to).map_err(io("creating", &to))?;
            }
            std::fs::set_permissions(&to, meta.permissions()).map_err(io("setting the mode of", &to))?;
            std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid())).map_err(io("chown", &to))?;
            merge_layer(&from, &to, bytes)?;
        } else {
            remove(&to)?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&from).map_err(io("reading", &from))?;
                std::os::unix::fs::symlink(&target, &to).map_err(io("linking", &to))?;
                let _ = std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid()));
            } else if meta.is_file() {
                *bytes += meta.len();
                if std::fs::hard_link(&from, &to).is_err() {
                    std::fs::copy(&from, &to).map_err(io("copying", &from))?;
                }
            }
            // Devices, sockets and fifos in images are rare; the guest's /dev is its own.
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_yields_absolute_paths() {
        let out = "\tlinux-vdso.so.1 (0x00007ffc)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        let paths = ldd_paths(out);
        assert_eq!(
            paths,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                "/lib/x86_64-linux-gnu/libc.so.6".into(),
                "/lib64/ld-linux-x86-64.so.2".into()
            ]
        );
    }

    #[test]
    fn only_a_kernel_with_modules_gets_insmod_lines() {
        assert!(init_script(true).contains("insmod /lib/modules/$m.ko"));
        let init = init_script(false);
        assert!(!init.contains("insmod"), "{init}");
        assert!(init.ends_with("exec /bin/atoll-guest\n"));
    }

    #[test]
    fn the_sandbox_kernel_override_has_no_modules_and_debians_has() {
        fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<std::ffi::OsString> {
            move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).into())
        }
        let dir = tempfile::tempdir().unwrap();
        let built = dir.path().join("vmlinux");
        let debian_env = env(&[("ATOLL_VM_KERNEL", "/d/vmlinuz"), ("ATOLL_VM_MODULES", "/d/mods")]);
        let debian = GuestKernel { kernel: "/d/vmlinuz".into(), modules: Some("/d/mods".into()) };
        assert_eq!(GuestKernel::find(&debian_env, &built), debian);
        std::fs::write(&built, b"ELF").unwrap();
        assert_eq!(GuestKernel::find(&debian_env, &built), GuestKernel { kernel: built.clone(), modules: None });
        let own = env(&[("ATOLL_SANDBOX_KERNEL", "/k/vmlinux"), ("ATOLL_VM_KERNEL", "/d/vmlinuz")]);
        assert_eq!(GuestKernel::find(own, &built), GuestKernel { kernel: "/k/vmlinux".into(), modules: None });
    }

    #[test]
    fn module_signatures_are_cut_and_unsigned_modules_kept() {
        let mut ko = b"ELFcode".to_vec();
        ko.extend_from_slice(b"SIGNATURE");
        let mut info = [0u8; 12];
        info[8..].copy_from_slice(&9u32.to_be_bytes());
        ko.extend_from_slice(&info);
        ko.extend_from_slice(b"~Module signature appended~\n");
        assert_eq!(strip_module_signature(ko), b"ELFcode");
        assert_eq!(strip_module_signature(b"ELFplain".to_vec()), b"ELFplain");
    }

    #[test]
    fn layers_merge_with_whiteouts_and_opaque_folders() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, m) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("m"));
        for d in [&a, &b, &m] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::create_dir_all(a.join("etc")).unwrap();
        std::fs::write(a.join("etc/passwd"), "root").unwrap();
        std::fs::write(a.join("etc/gone"), "x").unwrap();
        std::fs::create_dir_all(a.join("var/cache")).unwrap();
        std::fs::write(a.join("var/cache/old"), "x").unwrap();
        std::os::unix::fs::symlink("etc/passwd", a.join("link")).unwrap();
        std::fs::create_dir_all(b.join("etc")).unwrap();
        std::fs::write(b.join("etc/passwd"), "root2").unwrap();
        // As the image store unpacks them (the agent, and so its tests, run as root).
        crate::os::RealOs::new().make_whiteout(&b.join("etc/gone")).unwrap();
        std::fs::create_dir_all(b.join("var/cache")).unwrap();
        std::fs::write(b.join("var/cache/new"), "y").unwrap();
        crate::os::RealOs::new().set_opaque(&b.join("var/cache")).unwrap();
        let mut bytes = 0;
        merge_layer(&a, &m, &mut bytes).unwrap();
        merge_layer(&b, &m, &mut bytes).unwrap();
        assert_eq!(std::fs::read_to_string(m.join("etc/passwd")).unwrap(), "root2");
        assert_eq!(std::fs::read_link(m.join("link")).unwrap(), PathBuf::from("etc/passwd"));
        assert!(m.join("var/cache/new").is_file());
        assert!(!m.join("etc/gone").exists());
        assert!(!m.join("var/cache/old").exists());
    }
}
