use std::path::Path;
use std::time::{Duration, Instant};

use agent::runtime::logs::{self, LogOptions, Stream};
use agent::runtime::{ContainerState, Resources, Runtime};

use crate::{Node, container, pid_alive, sandbox, wait_state};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn a_container_echoes_exits_3_and_its_log_is_in_cri_format() {
    let node = Node::setup();
    let image = node.busybox();
    let rt = node.runtime();
    rt.run_sandbox(&sandbox("echo")).unwrap();
    let spec = container(&node, &image, "main", "echo hello from $HOSTNAME; echo oops >&2; exit 3");
    let id = rt.create_container("echo", &spec).unwrap();
    assert_eq!(rt.container_status(&id).unwrap().state, ContainerState::Created);
    rt.start_container(&id).unwrap();
    let status = wait_state(&rt, &id, ContainerState::Exited, WAIT);
    assert_eq!(status.exit_code, Some(3));
    assert_eq!(status.reason.as_deref(), Some("Error"));
    assert!(status.started_at.unwrap() <= status.finished_at.unwrap());
    let log = std::fs::read_to_string(&status.log_path).unwrap();
    let records: Vec<(&str, &str, &str)> = log
        .lines()
        .map(|l| {
            let mut p = l.splitn(4, ' ');
            let (ts, stream, tag, text) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
            assert!(ts.ends_with('Z') && ts.contains('T'), "{l}");
            (stream, tag, text)
        })
        .collect();
    assert!(records.contains(&("stdout", "F", "hello from echo")), "{log}");
    assert!(records.contains(&("stderr", "F", "oops")), "{log}");
    let stdout = LogOptions { stream: Some(Stream::Stdout), ..LogOptions::default() };
    assert_eq!(logs::read(&status.log_path, &stdout).unwrap(), b"hello from echo\n");
    rt.remove_sandbox("echo").unwrap();
    assert_eq!(node.leftovers(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn runc_is_selectable_by_name() {
    let node = Node::setup();
    assert!(agent::runtime::oci::find_program(Path::new("runc")).is_some(), "runc is missing: apt-get install runc");
    let image = node.busybox();
    let rt = node.runtime_named("runc");
    rt.run_sandbox(&sandbox("runc")).unwrap();
    let id = rt.create_container("runc", &container(&node, &image, "main", "echo via runc; exit 7")).unwrap();
    rt.start_container(&id).unwrap();
    let status = wait_state(&rt, &id, ContainerState::Exited, WAIT);
    assert_eq!(status.exit_code, Some(7));
    assert!(std::fs::read_to_string(&status.log_path).unwrap().contains(" stdout F via runc\n"));
    rt.remove_sandbox("runc").unwrap();
    assert_eq!(node.leftovers(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn stop_honours_the_grace_period_then_kills() {
    let node = Node::setup();
    let image = node.busybox();
    let rt = node.runtime();
    rt.run_sandbox(&sandbox("stop")).unwrap();
    // Exits on SIGTERM: stopped well within the grace period, with its own exit code.
    let polite = container(&node, &image, "polite", "trap 'exit 0' TERM; sleep 1000 & wait");
    let polite = rt.create_container("stop", &polite).unwrap();
    rt.start_container(&polite).unwrap();
    // Give the shell time to install its trap.
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    rt.stop_container(&polite, Duration::from_secs(10)).unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
    let s = rt.container_status(&polite).unwrap();
    assert_eq!((s.state, s.exit_code), (ContainerState::Exited, Some(0)));

    // Ignores SIGTERM (a pid 1 without a handler does): SIGKILL after the grace period.
    let stubborn = container(&node, &image, "stubborn", "exec sleep 1000");
    let stubborn = rt.create_container("stop", &stubborn).unwrap();
    rt.start_container(&stubborn).unwrap();
    let t = Instant::now();
    rt.stop_container(&stubborn, Duration::from_millis(700)).unwrap();
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(700) && took < Duration::from_secs(5), "took {took:?}");
    let s = rt.container_status(&stubborn).unwrap();
    assert_eq!((s.state, s.exit_code), (ContainerState::Exited, Some(137)));
    // Stopping again is a no-op.
    rt.stop_container(&stubborn, Duration::from_secs(1)).unwrap();
    rt.remove_sandbox("stop").unwrap();
    assert_eq!(node.leftovers(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn resource_limits_appear_in_the_containers_cgroup() {
    let node = Node::setup();
    let image = node.busybox();
    let rt = node.runtime();
    rt.run_sandbox(&sandbox("limits")).unwrap();
    let mut spec = container(&node, &image, "main", "exec sleep 1000");
    spec.resources =
        Resources { cpu_request_millis: Some(500), cpu_limit_millis: Some(250), memory_limit_bytes: Some(64 << 20) };
    let id = rt.create_container("limits", &spec).unwrap();
    rt.start_container(&id).unwrap();
    let path = rt.cgroup_path("limits", Some(&id));
    let dirs = rt.cgroup_dirs(&path).unwrap();
    let read = |file: &str| {
        dirs.iter()
            .map(|d| d.join(file))
            .find(|p| p.exists())
            .map(|p| std::fs::read_to_string(p).unwrap().trim().to_owned())
            .unwrap_or_else(|| panic!("no {file} under {dirs:?}"))
    };
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("cpu.max"), "25000 100000");
    } else {
        assert_eq!(read("memory.limit_in_bytes"), (64u64 << 20).to_string());
        assert_eq!(read("cpu.cfs_quota_us"), "25000");
        assert_eq!(read("cpu.shares"), "512");
    }
    // The container's process is in that cgroup.
    let pid = rt.container_status(&id).unwrap().pid.unwrap();
    let procs = read("cgroup.procs");
    assert!(procs.lines().any(|l| l == pid.to_string()), "{pid} not in {procs}");
    rt.remove_sandbox("limits").unwrap();
    assert_eq!(node.leftovers(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn a_new_runtime_object_finds_running_containers_and_their_exit() {
    let node = Node::setup();
    let image = node.busybox();
    let (id, pid, brief) = {
        let rt = node.runtime();
        rt.run_sandbox(&sandbox("restart")).unwrap();
        let id = rt.create_container("restart", &container(&node, &image, "main", "exec sleep 1000")).unwrap();
        rt.start_container(&id).unwrap();
        let s = rt.container_status(&id).unwrap();
        assert_eq!(s.state, ContainerState::Running);
        // This one exits while no runtime object exists.
        let brief = rt.create_container("restart", &container(&node, &image, "brief", "sleep 0.3; exit 5")).unwrap();
        rt.start_container(&brief).unwrap();
        (id, s.pid.unwrap(), brief)
    };
    std::thread::sleep(Duration::from_millis(800));
    // The agent "restarts": a fresh runtime object over the same folder.
    let rt = node.runtime();
    let b = rt.container_status(&brief).unwrap();
    assert_eq!((b.state, b.exit_code), (ContainerState::Exited, Some(5)));
    let s = rt.container_status(&id).unwrap();
    assert_eq!((s.state, s.pid), (ContainerState::Running, Some(pid)));
    assert!(pid_alive(pid));
    assert_eq!(rt.list_sandboxes().unwrap().len(), 1);
    assert_eq!(rt.list_containers(Some("restart")).unwrap().len(), 2);
    rt.stop_container(&id, Duration::ZERO).unwrap();
    let s = rt.container_status(&id).unwrap();
    assert_eq!((s.state, s.exit_code), (ContainerState::Exited, Some(137)));
    rt.remove_sandbox("restart").unwrap();
}

#[test]
fn removal_leaves_no_mount_cgroup_process_or_state_behind() {
    let node = Node::setup();
    let image = node.busybox();
    let rt = node.runtime();
    rt.run_sandbox(&sandbox("gone")).unwrap();
    let a = rt.create_container("gone", &container(&node, &image, "a", "exec sleep 1000")).unwrap();
    rt.start_container(&a).unwrap();
    // One created but never started, one running.
    let b = rt.create_container("gone", &container(&node, &image, "b", "exec sleep 1000")).unwrap();
    let pids: Vec<u32> = [&a, &b].iter().map(|id| rt.container_status(id).unwrap().pid.unwrap()).collect();
    assert!(pids.iter().all(|p| pid_alive(*p)));
    assert!(!node.leftovers().is_empty(), "mounts and cgroups exist while it runs");
    rt.remove_sandbox("gone").unwrap();
    node.os.reap();
    assert_eq!(node.leftovers(), Vec::<std::path::PathBuf>::new());
    assert!(pids.iter().all(|p| !pid_alive(*p)), "container processes survived");
    let state = node.dir.path().join("runtime");
    for dir in ["containers", "sandboxes", "runtime"]
        .map(|sub| state.join(sub))
        .into_iter()
        .chain([node.dir.path().join("layers")])
    {
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "{} still holds {left:?}", dir.display());
    }
    assert!(rt.list_containers(None).unwrap().is_empty());
    // Removing again is fine.
    rt.remove_sandbox("gone").unwrap();
}

#[test]
fn a_root_file_system_is_mounted_only_where_its_container_sees_it() {
    let node = Node::setup();
    let image = node.busybox();
    let rt = node.runtime();
    rt.run_sandbox(&sandbox("hidden")).unwrap();
    let id = rt.run_container("hidden", &container(&node, &image, "main", "exec sleep 1000")).unwrap();
    let pid = rt.container_status(&id).unwrap().pid.unwrap();
    // The node's mount namespace (this test's) holds the pod's namespace files but no root
    // file system: another container's runtime neither copies nor lists it.
    let mounts = node.leftovers();
    assert!(mounts.iter().all(|m| !m.ends_with("rootfs")), "{mounts:?}");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!info.contains(&id), "{info}");
    // The container has it as its root, writable (the upper layer is the container's own).
    let own = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert!(own.lines().any(|l| l.split(' ').nth(4) == Some("/") && l.contains(" - overlay ")), "{own}");
    assert!(std::fs::metadata(format!("/proc/{pid}/root/bin/busybox")).is_ok());
    std::fs::write(format!("/proc/{pid}/root/written"), b"x").unwrap();
    let upper = node.dir.path().join("layers").join(&id).join("upper/written");
    assert_eq!(std::fs::read(&upper).unwrap(), b"x");
    rt.remove_sandbox("hidden").unwrap();
    node.os.reap();
    assert!(!pid_alive(pid));
    assert_eq!(node.leftovers(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn containers_run_through_a_sealed_copy_of_the_runtime_binary() {
    use agent::os::Os as _;
    let node = Node::setup();
    let image = node.busybox();
    let program = agent::runtime::oci::find_program(Path::new(&crate::runtime_name())).unwrap();
    let copy = node.os.sealed_copy(&program).unwrap();
    // Sealed against writes: what the runtime checks before it skips copying itself.
    let mut file = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
    let err = std::io::Write::write_all(&mut file, b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(1), "EPERM expected: {err}");
    drop(file);
    // Run from it, the runtime makes no copy of its own (no second exec: one execve only).
    let out = std::process::Command::new("strace")
        .args(["-f", "-e", "trace=execve,execveat,mount"])
        .arg(&copy)
        .arg("--version")
        .output()
        .expect("strace is missing: apt-get install strace");
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{trace}");
    assert_eq!(trace.lines().filter(|l| l.contains("exec")).count(), 1, "{trace}");
    assert!(!trace.contains("mount("), "{trace}");
    let rt = node.runtime_named(copy.to_str().unwrap());
    rt.run_sandbox(&sandbox("sealed")).unwrap();
    let id = rt.run_container("sealed", &container(&node, &image, "main", "echo from a sealed runtime")).unwrap();
    let status = wait_state(&rt, &id, ContainerState::Exited, WAIT);
    assert_eq!(status.exit_code, Some(0));
    assert!(std::fs::read_to_string(&status.log_path).unwrap().contains(" stdout F from a sealed runtime\n"));
    rt.remove_sandbox("sealed").unwrap();
    assert_eq!(node.leftovers(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn user_env_workdir_and_hostname_reach_the_process() {
    let node = Node::setup();
    let image = node.busybox();
    let rt = node.runtime();
    rt.run_sandbox(&sandbox("proc")).unwrap();
    let mut spec = container(&node, &image, "main", r#"echo "$(id -u):$(id -g) $PWD $GREETING $(hostname)""#);
    spec.image.config.user = Some("nobody".into());
    spec.env = vec![("GREETING".into(), "hi".into())];
    spec.working_dir = Some("/tmp".into());
    let id = rt.create_container("proc", &spec).unwrap();
    rt.start_container(&id).unwrap();
    let status = wait_state(&rt, &id, ContainerState::Exited, WAIT);
    assert_eq!(status.exit_code, Some(0));
    assert_eq!(logs::read(&status.log_path, &LogOptions::default()).unwrap(), b"65534:65534 /tmp hi proc\n");
    rt.remove_sandbox("proc").unwrap();
}

#[test]
fn containers_join_the_sandboxes_network_namespace() {
    let node = Node::setup();
    let image = node.busybox();
    let netns = format!("atoll-test-{}", std::process::id());
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip").args(args).output().expect("ip (iproute2) is missing");
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    ip(&["netns", "add", &netns]);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ip(&["-n", &netns, "link", "add", "atoll-a", "type", "veth", "peer", "name", "atoll-b"]);
        let rt = node.runtime();
        let mut sb = sandbox("net");
        sb.network = agent::runtime::NetworkMode::Namespace(format!("/run/netns/{netns}").into());
        rt.run_sandbox(&sb).unwrap();
        let id = rt.create_container("net", &container(&node, &image, "main", "ls /sys/class/net")).unwrap();
        rt.start_container(&id).unwrap();
        let status = wait_state(&rt, &id, ContainerState::Exited, WAIT);
        let out = String::from_utf8(logs::read(&status.log_path, &LogOptions::default()).unwrap()).unwrap();
        rt.remove_sandbox("net").unwrap();
        out
    }));
    ip(&["netns", "delete", &netns]);
    let out = result.unwrap();
    let mut names: Vec<&str> = out.split_whitespace().collect();
    names.sort();
    assert_eq!(names, vec!["atoll-a", "atoll-b", "lo"]);
}

#[test]
fn a_pods_containers_share_ipc_and_uts_but_not_pids() {
    let node = Node::setup();
    let image = node.busybox();
    let rt = node.runtime();
    // All three run at once, so no namespace can be freed and its number reused.
    let script = "for ns in ipc uts pid; do readlink /proc/self/ns/$ns; done; hostname; sleep 1";
    let mut ids = Vec::new();
    for (pod, name) in [("pod-a", "one"), ("pod-a", "two"), ("pod-b", "one")] {
        if rt.sandbox_status(pod).is_err() {
            rt.run_sandbox(&sandbox(pod)).unwrap();
        }
        let id = rt.create_container(pod, &container(&node, &image, name, script)).unwrap();
        rt.start_container(&id).unwrap();
        ids.push(id);
    }
    let mut seen = Vec::new();
    for id in &ids {
        let status = wait_state(&rt, id, ContainerState::Exited, WAIT);
        let out = String::from_utf8(logs::read(&status.log_path, &LogOptions::default()).unwrap()).unwrap();
        let lines: Vec<String> = out.lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 4, "{out}");
        seen.push(lines);
    }
    let (a1, a2, b1) = (&seen[0], &seen[1], &seen[2]);
    assert_eq!((&a1[0], &a1[1]), (&a2[0], &a2[1]), "same pod: same IPC and UTS namespaces");
    assert_ne!(a1[2], a2[2], "each container has its own pid namespace");
    assert_ne!(a1[0], b1[0], "pods do not share IPC");
    assert_ne!(a1[1], b1[1], "pods do not share UTS");
    assert_eq!((a1[3].as_str(), b1[3].as_str()), ("pod-a", "pod-b"));
    rt.remove_sandbox("pod-a").unwrap();
    rt.remove_sandbox("pod-b").unwrap();
    assert_eq!(node.leftovers(), Vec::<std::path::PathBuf>::new());
}

/// Reads `conn` until `want` has been seen (or panics after `WAIT`); returns all it read.
fn read_until(conn: &mut std::os::unix::net::UnixStream, want: &str) -> String {
    use std::io::Read;
    conn.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(want) {
        assert!(Instant::now() < deadline, "no {want:?} from the terminal; got {:?}", String::from_utf8_lossy(&seen));
        match conn.read(&mut buf) {
            Ok(0) => panic!("the terminal closed before {want:?}; got {:?}", String::from_utf8_lossy(&seen)),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn a_tty_container_has_a_controlling_terminal_that_attach_types_into_and_resizes() {
    use std::io::Write;
    let node = Node::setup();
    let image = node.busybox();
    let rt = node.runtime();
    rt.run_sandbox(&sandbox("tty")).unwrap();
    let mut spec = container(&node, &image, "main", "exec sh -i");
    spec.tty = true;
    spec.stdin = true;
    let id = rt.run_container("tty", &spec).unwrap();
    let socket = rt.attach_socket(&id).expect("a tty container has an attach socket");
    let resize = socket.with_file_name(agent::console::RESIZE_SOCKET);
    assert!(resize.exists(), "{} is missing", resize.display());
    let mut conn = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let mut sizer = std::os::unix::net::UnixStream::connect(&resize).unwrap();
    sizer.write_all(b"101 33\n").unwrap();
    // The size is applied by the shim's own thread: ask until it shows.
    let deadline = Instant::now() + WAIT;
    loop {
        conn.write_all(b"tty; stty size\n").unwrap();
        let seen = read_until(&mut conn, "\n/ # ");
        if seen.contains("33 101") {
            assert!(seen.contains("/dev/pts/0"), "{seen:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the size never reached the terminal: {seen:?}");
    }
    conn.write_all(b"echo typed-$((6*7))\n").unwrap();
    read_until(&mut conn, "typed-42");
    conn.write_all(b"exit 4\n").unwrap();
    let status = wait_state(&rt, &id, ContainerState::Exited, WAIT);
    assert_eq!(status.exit_code, Some(4));
    // The terminal's output went to the log too, as stdout.
    let log = std::fs::read_to_string(&status.log_path).unwrap();
    assert!(log.contains(" stdout F typed-42\r"), "{log}");
    rt.remove_sandbox("tty").unwrap();
    assert_eq!(node.leftovers(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn a_tmpfs_is_told_from_a_disk_folder() {
    use agent::os::Os as _;
    let node = Node::setup();
    let dir = node.dir.path().join("volatile");
    std::fs::create_dir(&dir).unwrap();
    assert!(!node.os.is_tmpfs(&dir).unwrap(), "the test's folder is expected on a disk");
    node.os.mount_tmpfs(&dir).unwrap();
    assert!(node.os.is_tmpfs(&dir).unwrap());
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dir).unwrap().permissions());
    assert_eq!(mode & 0o7777, 0o700, "only root may look into the runtime's records");
    node.os.unmount(&dir).unwrap();
    assert_eq!(node.leftovers(), Vec::<std::path::PathBuf>::new());
}
