# The kernel template: imported modules shared by every kernel forked from it.
#
# The server starts this program in a sandbox of its own: bubblewrap run as root without a
# user namespace (its own mount, PID, network, IPC, UTS and cgroup namespaces, read-only
# system, no workspace, no kernel sockets) and with a filter of its own (the sandbox's but
# the mount calls a fork needs). Its first step, before anything but the standard library
# is imported: /proc/sys read-only, a read-only /proc of its own PID namespace at
# VISIBLE_PROC (a fork's user namespace may mount a /proc only while one without covered
# parts is visible), and of its capabilities only CAP_SETUID and CAP_SETGID, bounding set
# included: a fork needs them to become its session's host uid. It imports ipykernel and
# PYTHON_PRELOAD once, does the part of the kernel application's start that needs no
# socket, thread or session (its command line, IPython profile and configuration files, the
# interactive shell with its default extensions, the start-up code compiled),
# freezes what it imported out of the garbage collector (so a child's first full collection
# does not copy those pages) and waits for requests on the descriptor named by argv[1], a
# SOCK_SEQPACKET socket to the server. No user code ever
# runs here, and it holds nothing of any session: each request brings the session's host
# uid, its workspace and socket directory as detached mounts (open_tree descriptors) and
# the run's cgroup.procs files opened by the server.
#
# A fork, before anything of the user's runs:
#   1. closes the server's socket, joins the run's cgroups, becomes the session's host uid
#      and gid (which ends its capabilities on the host);
#   2. unshares user, mount, PID, network (unless SANDBOX_NETWORK=allow), IPC, UTS and
#      cgroup namespaces (the user namespace is owned by the session's uid, so the kernel's
#      per-uid counters are the session's, as for any other sandbox of it), maps uid and
#      gid 65534 to the session's and forks: the child is pid 1 of the new PID namespace
#      and stays its reaper;
#   3. makes every mount private, mounts its own /proc (read-only, as the one it is allowed
#      by), /tmp (HOME, which also covers VISIBLE_PROC) and /dev/shm, makes /dev read-only,
#      and attaches the workspace at /mnt/data and the sockets at /run/kernel;
#   4. sets the rlimits, closes every descriptor above stdio, drops every capability
#      (bounding, ambient, effective, permitted, inheritable), sets no_new_privs and installs
#      the sandbox's seccomp filters (descriptors named by argv[2:], read at start);
#   5. forks the kernel (pid 2), which reseeds the random generators and starts IPKernelApp
#      on the connection file in /run/kernel (the rest of its start: sockets, threads, the
#      kernel object wired to the template's shell), runs the server's start-up code
#      (startup.py) and serves. Its stdout and stderr go to /dev/null.
#
# The template refuses to fork while it has more than one thread (a forked thread's locks
# would stay locked in the child).

import ctypes
import gc
import json
import os
import select
import signal
import socket
import struct
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
OPEN_TREE_CLONE = 1
O_CLOEXEC = 0o2000000
SYS_CAPSET = {"x86_64": 126, "aarch64": 91}[os.uname().machine]
MOVE_MOUNT_F_EMPTY_PATH = 4
AT_FDCWD = -100
LINUX_CAPABILITY_VERSION_3 = 0x20080522
MAX_FDS = 8
CAP_SETGID = 6
CAP_SETUID = 7
SANDBOX_ID = 65534
# Below the template's /tmp, so the fork's own /tmp covers it.
VISIBLE_PROC = "/tmp/.proc"

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
libc.syscall.restype = ctypes.c_long


def check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source, target, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None
    check(libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def prctl(option, arg=0):
    check(libc.prctl(option, arg, 0, 0, 0), f"prctl {option}")


def attach(tree_fd, target):
    result = libc.syscall(
        SYS_MOVE_MOUNT, tree_fd, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH
    )
    check(result, f"move_mount {target}")


def clone_mount(path):
    fd = libc.syscall(SYS_OPEN_TREE, AT_FDCWD, path.encode(), OPEN_TREE_CLONE | O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"open_tree {path}: {os.strerror(err)}")
    return fd


def mounts_below(prefix):
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


def keep_capabilities(kept):
    """Drop every capability but `kept` (a bit mask below 32) from every set."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last + 1):
        if not kept & (1 << cap):
            prctl(PR_CAPBSET_DROP, cap)
    check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient")
    header = struct.pack("Ii", LINUX_CAPABILITY_VERSION_3, 0)
    # Two __user_cap_data_struct (effective, permitted, inheritable): the low and high words.
    data = struct.pack("6I", kept, kept, 0, 0, 0, 0)
    check(libc.syscall(SYS_CAPSET, header, data), "capset")
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def drop_capabilities():
    keep_capabilities(0)


def confine_template():
    """First thing: /proc/sys read-only (root may write any sysctl its mode lets the owner
    write), the visible /proc forks need, then only CAP_SETUID and CAP_SETGID."""
    ro = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    mount("/proc/sys", "/proc/sys", None, MS_BIND | MS_REC)
    mount(None, "/proc/sys", None, MS_REMOUNT | MS_BIND | ro)
    os.mkdir(VISIBLE_PROC, 0o700)
    mount("proc", VISIBLE_PROC, "proc", ro)
    keep_capabilities((1 << CAP_SETUID) | (1 << CAP_SETGID))


def become(uid, gid, network):
    """Leave root for the session's host uid, then a user namespace of that uid's own."""
    if uid <= 0 or gid <= 0:
        raise ValueError("a fork never runs as root")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    # Changing uid made the process undumpable: /proc/self would stay root's.
    prctl(PR_SET_DUMPABLE, 1)
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP
    if not network:
        flags |= CLONE_NEWNET
    check(libc.unshare(CLONE_NEWUSER | flags), "unshare")
    for name, text in (
        ("setgroups", "deny"),
        ("uid_map", f"{SANDBOX_ID} {uid} 1"),
        ("gid_map", f"{SANDBOX_ID} {gid} 1"),
    ):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_filters(programs):
    for program in programs:
        buf = ctypes.create_string_buffer(program, len(program))
        prog = SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
        check(
            libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0),
            "seccomp",
        )


def reseed():
    import random

    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


KERNEL_ARGV = [
    "-f",
    "/run/kernel/kernel.json",
    "--HistoryManager.enabled=False",
    "--IPKernelApp.quiet=True",
]


def prepare_kernel_app():
    """In the template: the kernel application's part of its start that needs neither
    sockets nor threads nor anything of a session (its command line, the IPython profile and
    the configuration files of the read-only system), done once for every fork."""
    from IPython.core.application import BaseIPythonApplication
    from ipykernel.kernelapp import IPKernelApp

    sys.argv = ["ipykernel_launcher"]
    app = IPKernelApp.instance()
    BaseIPythonApplication.initialize(app, KERNEL_ARGV)
    # The fork's initialize() skips that part: it was done here.
    BaseIPythonApplication.initialize = lambda self, argv=None: None
    return app


def prepare_shell(app):
    """In the template: the kernel's interactive shell (namespaces, magics, formatters,
    completer, the default extensions loaded), which needs no socket, thread or session
    either. The fork's kernel finds it as the one shell instance and wires its sockets to
    it; what the shell took from the template's place (its working directory) is set again
    in the fork."""
    shell_class = app.kernel_class.shell_class.default_value
    from ipykernel.compiler import XCachingCompiler

    shell = shell_class.instance(
        parent=app, profile_dir=app.profile_dir, compiler_class=XCachingCompiler
    )
    for name in app.default_extensions + app.extensions + app.extra_extensions:
        try:
            shell.extension_manager.load_extension(name)
        except Exception:
            pass  # The fork's start tries it again, and logs why it fails.
    return shell


# The server's start-up code for every kernel (startup.py), run by each fork before it serves.
STARTUP = os.environ.pop("CI_TEMPLATE_STARTUP", "")


def start_kernel(app, shell, startup):
    reseed()
    if app is None:
        from ipykernel.kernelapp import IPKernelApp

        sys.argv = ["ipykernel_launcher"]
        app = IPKernelApp.instance()
    else:
        # The profile's directories were made in the template's /tmp, which the fork's covers.
        os.makedirs(app.profile_dir.location, 0o755, exist_ok=True)
        app.profile_dir.check_dirs()
    if shell is not None:
        from pathlib import Path

        shell.starting_dir = os.getcwd()
        shell.history_manager.dir_hist[:] = [Path.cwd()]
        init_shell = app.init_shell

        def init_forked_shell():
            # The kernel got the template's shell, made before it was.
            shell.kernel = app.kernel
            shell.parent = app.kernel
            init_shell()

        app.init_shell = init_forked_shell
    app.initialize(KERNEL_ARGV)
    # A kernel whose start-up code fails ends here: the server then starts a cold one, which
    # runs it as a cell and logs the failure.
    if startup is not None:
        try:
            exec(startup, app.shell.user_ns)
        except BaseException:
            os._exit(1)
    elif STARTUP and not app.shell.run_cell(STARTUP, store_history=False, silent=True).success:
        os._exit(1)
    app.start()


def isolate(request, workspace_fd, sockets_fd, filters, prepared):
    """In pid 1 of the new PID namespace: build the sandbox, then fork the kernel."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    size = int(request["tmp_bytes"])
    # Runtime files bound below /tmp (matplotlib's font cache) are kept on the new /tmp.
    below = [p for p in mounts_below("/tmp/") if p != VISIBLE_PROC]
    kept = [(p, os.path.isdir(p), clone_mount(p)) for p in below]
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=755")
    for point, is_dir, tree in kept:
        os.makedirs(point if is_dir else os.path.dirname(point), 0o755, exist_ok=True)
        if not is_dir:
            open(point, "a").close()
        attach(tree, point)
        os.close(tree)
    os.mkdir(request["home"], 0o755)
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=1777")
    mount(None, "/dev", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    attach(workspace_fd, "/mnt/data")
    attach(sockets_fd, "/run/kernel")
    for resource, value in request["rlimits"]:
        import resource as r

        r.setrlimit(resource, (value, value))
    os.chdir("/mnt/data")
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, 1 << 20)
    drop_capabilities()
    install_filters(filters)
    kernel = os.fork()
    if kernel == 0:
        start_kernel(*prepared)
        os._exit(0)
    # The reaper: every orphan of the namespace comes here; the kernel's end is ours.
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(0)
        if pid == kernel:
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def fork_kernel(request, fds, filters, control, report_w, prepared):
    """In the forked child: join the cgroups, become the session's uid in namespaces of its
    own, hand over to pid 1."""
    control.close()
    os.setsid()
    workspace_fd, sockets_fd, *cgroup_fds = fds
    for fd in cgroup_fds:
        os.write(fd, b"0")
        os.close(fd)
    become(int(request["uid"]), int(request["gid"]), request.get("network") is True)
    init = os.fork()
    if init == 0:
        os.close(report_w)
        isolate(request, workspace_fd, sockets_fd, filters, prepared)
        os._exit(1)
    os.write(report_w, b"%d\n" % init)
    os._exit(0)


def serve(control, filters, prepared):
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        ready, _, _ = select.select([control], [], [], 1.0)
        if not ready:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(control, 65536, MAX_FDS)
        except OSError:
            return
        if not data:
            return  # The server is gone.
        answer = {"ok": False}
        t0 = time.perf_counter()
        try:
            request = json.loads(data)
            threads = len(os.listdir("/proc/self/task"))
            if threads != 1:
                raise RuntimeError(f"the template has {threads} threads; it forks only with one")
            report_r, report_w = os.pipe()
            child = os.fork()
            if child == 0:
                try:
                    os.close(report_r)
                    fork_kernel(request, fds, filters, control, report_w, prepared)
                except BaseException as err:
                    print(f"kernel fork failed: {err}", file=sys.stderr, flush=True)
                os._exit(1)
            os.close(report_w)
            # The answer goes as soon as the fork's init exists; the fork is reaped above.
            with os.fdopen(report_r) as report:
                init = report.readline().strip()
            if not init:
                raise RuntimeError("the fork failed before its namespace was made")
            answer = {"ok": True, "pid": int(init), "ms": (time.perf_counter() - t0) * 1e3}
        except Exception as err:
            answer = {"ok": False, "error": str(err)}
        finally:
            for fd in fds:
                os.close(fd)
        control.send(json.dumps(answer).encode())


def main():
    control = socket.socket(fileno=int(sys.argv[1]))
    filters = []
    for fd in sys.argv[2:]:
        with os.fdopen(int(fd), "rb") as f:
            filters.append(f.read())
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    confine_template()
    # What every kernel imports, once: the kernel app, what it imports while it starts (the
    # debugger's debugpy, the shell, tornado's loop: about half a second) and the preloads.
    started_by_the_app = [
        "ipykernel.kernelapp",
        "ipykernel.ipkernel",
        "ipykernel.zmqshell",
        "ipykernel.debugger",
        "ipykernel.comm",
        "ipykernel.eventloops",
        "IPython.core.completer",
        "IPython.core.completerlib",
        "IPython.core.debugger",
        "IPython.core.oinspect",
        "IPython.extensions.storemagic",
        "IPython.utils.wildcard",
        "tornado.platform.asyncio",
        "tornado.ioloop",
        "pdb",
        "faulthandler",
        "resource",
    ]
    for name in started_by_the_app + json.loads(os.environ.pop("CI_TEMPLATE_PRELOAD", "[]")):
        try:
            __import__(name)
        except Exception as err:
            print(f"preload of {name} failed: {err}", file=sys.stderr, flush=True)
    app = shell = startup = None
    try:
        app = prepare_kernel_app()
        shell = prepare_shell(app)
        # Compiled once here; each fork runs it in its shell's namespace.
        startup = compile(STARTUP, "<kernel start-up>", "exec") if STARTUP else None
    except Exception as err:
        # A fork then does in its own start what is missing.
        print(f"the kernel could not be prepared: {err}", file=sys.stderr, flush=True)
    gc.collect()
    gc.freeze()
    control.send(b'{"ready": true}')
    serve(control, filters, (app, shell, startup))


main()
