//! Runs untrusted, model-written Python (HumanEval completions) in a
//! throwaway sandbox:
//!
//! - a separate `python3 -I -` process (the program on stdin), in its own
//!   session, with an empty
//!   environment (no inherited secrets) and a fresh temporary directory as
//!   its working directory and home;
//! - rlimits: CPU seconds, address space, file size, open files, no core
//!   dumps, and a process count;
//! - a wall-clock timeout, after which the whole process group is killed;
//! - as root (CI, containers): a network namespace with no interfaces up,
//!   a mount namespace with fresh tmpfs over /tmp, /var/tmp and /dev/shm,
//!   and a dedicated unprivileged uid, so the process count limit holds and
//!   nothing outside the temporary directory is writable; every process of
//!   that uid is killed afterwards;
//! - otherwise: a network namespace inside a user namespace where the
//!   kernel allows it; where it does not, the environment says that the
//!   network is not isolated, and so does the outcome.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Sandboxed code runs as its own uid (and gid) when pdbench runs as root,
/// taken from this range; no account needs to exist for it. A uid per run
/// keeps concurrent sandboxes (threads, other pdbench processes) from
/// killing each other's processes.
const SANDBOX_ID_BASE: u32 = 61_000;
const SANDBOX_ID_SPAN: u32 = 4_000;

fn next_sandbox_id() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    SANDBOX_ID_BASE + (std::process::id().wrapping_mul(97).wrapping_add(n)) % SANDBOX_ID_SPAN
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Limits {
    pub wall: Duration,
    pub cpu_s: u64,
    pub memory_bytes: u64,
    pub file_bytes: u64,
    pub processes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            wall: Duration::from_secs(10),
            cpu_s: 10,
            memory_bytes: 1 << 30,
            file_bytes: 16 << 20,
            processes: 32,
        }
    }
}

/// What isolation the sandbox got on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Isolation {
    pub network_namespace: bool,
    pub mount_namespace: bool,
    pub dedicated_uid: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Exited with status 0 within the limits.
    pub passed: bool,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stderr_tail: String,
    pub isolation: Isolation,
    /// The uid the program ran as, when it had one of its own.
    pub uid: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox: {what}: {cause}")]
    Io {
        what: &'static str,
        cause: std::io::Error,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> SandboxError {
    move |source| SandboxError::Io {
        what,
        cause: source,
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The isolation this process can give sandboxed code, found by trying it
/// once in a throwaway child.
pub fn isolation() -> Isolation {
    static ISO: std::sync::OnceLock<Isolation> = std::sync::OnceLock::new();
    *ISO.get_or_init(|| {
        let probe = |flags: libc::c_int| {
            let mut c = Command::new("/bin/sh");
            c.args(["-c", "exit 0"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: unshare is async-signal-safe.
            unsafe {
                c.pre_exec(move || {
                    if libc::unshare(flags) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            c.status().map(|s| s.success()).unwrap_or(false)
        };
        if is_root() {
            Isolation {
                network_namespace: probe(libc::CLONE_NEWNET),
                mount_namespace: probe(libc::CLONE_NEWNS),
                dedicated_uid: true,
            }
        } else {
            Isolation {
                network_namespace: probe(libc::CLONE_NEWUSER | libc::CLONE_NEWNET),
                mount_namespace: false,
                dedicated_uid: false,
            }
        }
    })
}

fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value as libc::rlim_t,
        rlim_max: value as libc::rlim_t,
    };
    // SAFETY: setrlimit is async-signal-safe; `lim` is a valid struct.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn mount_tmpfs(target: &std::ffi::CStr) {
    let fs = c"tmpfs";
    let opts = c"size=16m,mode=1777";
    // SAFETY: plain syscall with valid C strings. A failed mount leaves the
    // directory as it is; the uid drop still keeps it unwritable or shared.
    unsafe {
        libc::mount(
            fs.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr() as *const libc::c_void,
        );
    }
}

/// Live (not zombie) processes whose real uid is `id`.
fn live_processes_of(id: u32) -> usize {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|status| {
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|u| u.parse::<u32>().ok());
            let zombie = status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'));
            uid == Some(id) && !zombie
        })
        .count()
}

/// Kills every process of the sandbox uid: a helper takes that uid and
/// signals all it may signal, again while any is left (a fork in flight
/// can outlive one round).
fn kill_sandbox_uid(id: u32) {
    for _ in 0..50 {
        if live_processes_of(id) == 0 {
            return;
        }
        let mut c = Command::new("/bin/true");
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls.
        unsafe {
            c.pre_exec(move || {
                libc::setgroups(0, std::ptr::null());
                libc::setgid(id);
                if libc::setuid(id) == 0 {
                    libc::kill(-1, libc::SIGKILL);
                }
                Ok(())
            });
        }
        let _ = c.status();
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs `program` with `python3 -I` in a fresh sandbox.
pub fn run_python(program: &str, limits: &Limits) -> Result<Outcome, SandboxError> {
    let iso = isolation();
    let id = next_sandbox_id();
    let dir = tempfile::Builder::new()
        .prefix("pdbench-sandbox-")
        .tempdir()
        .map_err(io("creating the temporary directory"))?;
    if iso.dedicated_uid {
        std::os::unix::fs::chown(dir.path(), Some(id), Some(id))
            .map_err(io("handing the directory to the sandbox uid"))?;
    }
    let home = dir.path().to_string_lossy().to_string();
    let mut cmd = Command::new("python3");
    // The program comes on stdin: once /tmp is a fresh tmpfs, paths under
    // the old /tmp no longer resolve, but the open working directory does.
    cmd.args(["-I", "-"])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &home)
        .env("TMPDIR", &home)
        .env("LANG", "C.UTF-8")
        .env("PDBENCH_SANDBOX", "1")
        .env(
            "PDBENCH_SANDBOX_NETWORK",
            if iso.network_namespace {
                "isolated"
            } else {
                "not-isolated"
            },
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if !iso.network_namespace {
        // No namespace: at least send well-behaved clients nowhere.
        for k in [
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "all_proxy",
        ] {
            cmd.env(k, "http://127.0.0.1:9");
        }
    }
    let lim = *limits;
    // SAFETY: the closure makes only async-signal-safe calls (setsid,
    // unshare, mount, setrlimit, setgroups, setgid, setuid) and touches no
    // allocator state.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            if iso.dedicated_uid {
                let mut flags = 0;
                if iso.network_namespace {
                    flags |= libc::CLONE_NEWNET;
                }
                if iso.mount_namespace {
                    flags |= libc::CLONE_NEWNS;
                }
                if flags != 0 && libc::unshare(flags) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if iso.mount_namespace {
                    // Keep our mounts out of the host's mount table.
                    libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    );
                    // The working directory is already open, so these
                    // mounts do not hide it even when it lives under /tmp.
                    mount_tmpfs(c"/tmp");
                    mount_tmpfs(c"/var/tmp");
                    mount_tmpfs(c"/dev/shm");
                }
            } else if iso.network_namespace
                && libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            set_limit(libc::RLIMIT_CPU, lim.cpu_s)?;
            set_limit(libc::RLIMIT_AS, lim.memory_bytes)?;
            set_limit(libc::RLIMIT_FSIZE, lim.file_bytes)?;
            set_limit(libc::RLIMIT_NOFILE, 64)?;
            set_limit(libc::RLIMIT_CORE, 0)?;
            if iso.dedicated_uid {
                set_limit(libc::RLIMIT_NPROC, lim.processes)?;
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(id) != 0
                    || libc::setuid(id) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(io("starting python3"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let source = program.as_bytes().to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        // A program that dies early closes the pipe: not our error.
        let _ = stdin.write_all(&source);
    });
    let mut stderr = child.stderr.take().expect("piped");
    // Read stderr on a thread so a chatty program cannot block on a full pipe.
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(1 << 20).read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(io("waiting for python3"))? {
            break s;
        }
        if start.elapsed() >= limits.wall {
            timed_out = true;
            // SAFETY: the child leads its own process group (setsid).
            unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
            break child.wait().map_err(io("waiting for python3"))?;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Whatever it started, in or out of its group, ends with it.
    // SAFETY: as above.
    unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
    if iso.dedicated_uid {
        kill_sandbox_uid(id);
    }
    let _ = writer.join();
    let err = reader.join().unwrap_or_default();
    let text = String::from_utf8_lossy(&err);
    let tail: String = text
        .chars()
        .rev()
        .take(2000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    use std::os::unix::process::ExitStatusExt;
    Ok(Outcome {
        passed: status.success() && !timed_out,
        exit_code: status.code(),
        signal: status.signal(),
        timed_out,
        stderr_tail: tail,
        isolation: iso,
        uid: iso.dedicated_uid.then_some(id),
    })
}

/// Whether `python3` can be started here at all.
pub fn python_available() -> bool {
    Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(program: &str) -> Outcome {
        let limits = Limits {
            wall: Duration::from_secs(5),
            cpu_s: 4,
            ..Limits::default()
        };
        run_python(program, &limits).expect("the sandbox starts")
    }

    #[test]
    fn good_code_passes_and_failures_fail() {
        assert!(run("assert 1 + 1 == 2\n").passed);
        let o = run("raise SystemExit(3)\n");
        assert!(!o.passed);
        assert_eq!(o.exit_code, Some(3));
        let o = run("assert False, 'nope'\n");
        assert!(!o.passed && o.stderr_tail.contains("nope"), "{o:?}");
    }

    #[test]
    fn an_infinite_loop_is_stopped() {
        let t = Instant::now();
        let o = run("while True:\n    pass\n");
        assert!(!o.passed);
        assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    }

    #[test]
    fn a_huge_allocation_fails() {
        let o = run("x = bytearray(8 * 1024**3)\nprint(len(x))\n");
        assert!(!o.passed);
        assert!(o.stderr_tail.contains("MemoryError"), "{o:?}");
    }

    #[test]
    fn a_fork_bomb_is_contained() {
        let t = Instant::now();
        let o = run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n");
        assert!(!o.passed);
        assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
        // Nothing of it is left running.
        std::thread::sleep(Duration::from_millis(200));
        if isolation().dedicated_uid {
            let own = o.uid.expect("a dedicated uid");
            assert_eq!(
                live_processes_of(own),
                0,
                "sandbox uid {own}: processes left behind"
            );
        }
    }

    #[test]
    fn writes_outside_the_temporary_directory_do_not_land() {
        let in_tmp = std::env::temp_dir().join(format!("pdbench-escape-{}", std::process::id()));
        let in_tree = std::env::current_dir()
            .unwrap()
            .join("pdbench-escape-probe");
        for target in [&in_tmp, &in_tree] {
            let o = run(&format!(
                "open('inside.txt', 'w').write('ok')\nopen({:?}, 'w').write('escaped')\n",
                target.display().to_string()
            ));
            if isolation().dedicated_uid {
                // /tmp is a private tmpfs; the tree is not the sandbox uid's.
                assert!(
                    !target.exists(),
                    "the sandbox wrote {}: {o:?}",
                    target.display()
                );
            } else {
                let _ = std::fs::remove_file(target);
            }
        }
    }

    #[test]
    fn the_network_is_out_of_reach_or_flagged() {
        let o = run(
            "import os, socket\nassert os.environ['PDBENCH_SANDBOX_NETWORK'] == 'isolated'\ns = socket.create_connection(('1.1.1.1', 53), timeout=2)\n",
        );
        assert!(!o.passed, "{o:?}");
        if isolation().network_namespace {
            assert!(
                o.stderr_tail.contains("OSError") || o.stderr_tail.contains("unreachable"),
                "{o:?}"
            );
        }
    }

    #[test]
    fn no_secrets_are_inherited() {
        std::env::set_var("PDBENCH_TEST_SECRET", "hunter2");
        let o = run("import os\nassert 'PDBENCH_TEST_SECRET' not in os.environ\nassert os.environ['PDBENCH_SANDBOX'] == '1'\n");
        assert!(o.passed, "{o:?}");
    }
}
