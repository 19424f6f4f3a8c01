"""`python ARGS` for the tests, without paying for the imports each time.

Most of the suite's time went into Python importing torch, torchmetrics and Lightning, about 5 s in every process
a test starts (train.py, evaluate.py, the app, the benchmarks' scripts). Here one server per pytest worker imports
those libraries once (not cifar_lit: each program imports the project's code itself, in its own order); each
`python ARGS` is a fork of it, set up as a fresh interpreter would be: its own argv, sys.path, working folder,
environment, standard streams, process group and exit status. Nothing of the tests' process leaks in: the server is
a separate interpreter that only imported libraries.

PYTHON (an executable file this module writes) stands for the interpreter: it hands its arguments, environment and
standard streams to the server, passes the signals it gets on to the program's process group (as a signal to the
group of a real `python` would reach the program and what it started), and exits as the program exits; when PYTHON
is killed, so are they. When no server is up, or the arguments or environment need a fresh interpreter (interpreter
flags, torch, CUDA or distributed variables that are read at import, files passed beyond the standard streams), it
becomes the real interpreter (exec). Python starts a program through PYTHON and signals the program itself, as
subprocess.Popen signals a real interpreter: a SIGKILL cannot be passed on.

Linux only (abstract sockets, pidfds); elsewhere the tests start the real interpreter."""

from __future__ import annotations

import gc
import io
import json
import os
import random
import selectors
import signal
import socket
import subprocess
import sys

PYTHON = "CIFAR_LIT_TEST_PYTHON"  # the path of PYTHON, for the tests and the programs they start
SERVER = "CIFAR_LIT_TEST_FORKSERVER"  # the server's socket name, for PYTHON
PID_FD = "CIFAR_LIT_TEST_PID_FD"  # where PYTHON writes the program's pid, for Python
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
# Read at import by Python, torch, Lightning, torchmetrics, matplotlib or tempfile: a program that sets them
# differently gets a fresh interpreter. (Lightning's PL_ variables, such as the PL_GLOBAL_SEED that in-process runs
# leave behind, are read at run time.) PYTHONPATH and PYTHONUNBUFFERED are applied in the fork; PYTHON is the lease
# script's name for the interpreter, not Python's.
IMPORT_TIME = ("PYTHON", "TORCH", "PYTORCH", "CUDA", "NVIDIA", "OMP_", "MKL", "KMP_", "GOMP", "OPENBLAS", "LD_",
               "POSSIBLE_USER_WARNINGS", "MPL", "TMP", "TEMP", "HOME", "XDG_", "RANK", "LOCAL_RANK", "WORLD_SIZE",
               "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "MASTER_", "SLURM_", "JSM_", "OMPI_", "PMI_")
HONOURED = ("PYTHON", "PYTHONPATH", "PYTHONUNBUFFERED")


def prepare(folder: str) -> str:
    """Write PYTHON into `folder`; this process and all it starts from now on use it (environment). Until a
    server runs, PYTHON is the real interpreter."""
    python = os.path.join(folder, "python")
    with open(python, "w") as handle:
        # -S: PYTHON itself needs only the standard library, and starts in milliseconds without site-packages.
        handle.write(f"#!{sys.executable} -S\nimport sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n"
                     "import forkserver\nforkserver.client(sys.argv[1:])\n")
    os.chmod(python, 0o755)
    os.environ.update({PYTHON: python, SERVER: f"cifar-lit-forkserver-{os.getpid()}"})
    return python


def start(folder: str) -> subprocess.Popen:
    """The server for PYTHON (its log in `folder`). It imports for a few seconds; PYTHON waits for it meanwhile."""
    with open(os.path.join(folder, "server.log"), "w") as log:
        return subprocess.Popen([sys.executable, __file__, "serve", os.environ[SERVER]], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log)


# --- the client: PYTHON ---------------------------------------------------------------------------------------


def client(args: list[str]) -> None:
    report = os.environ.pop(PID_FD, None)
    name = os.environ.get(SERVER)

    def tell(pid: int) -> None:
        if report is not None:
            os.write(int(report), str(pid).encode())
            os.close(int(report))

    def become_python() -> None:
        tell(os.getpid())  # exec keeps the pid
        os.execv(sys.executable, [sys.executable, *args])

    if not name or not args or (args[0].startswith("-") and args[0] not in ("-m", "-c", "-")) or passed_fds(report):
        become_python()
    pid, pending = None, []

    def forward(signum, frame):
        if pid is None:
            pending.append(signum)
        else:
            try:
                os.killpg(pid, signum)
            except ProcessLookupError:
                pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        server.connect("\0" + name)
        request = {"args": args, "cwd": os.getcwd(), "env": dict(os.environ)}
        socket.send_fds(server, [json.dumps(request).encode()], [0, 1, 2])
        reply = server.recv(64).decode()
    except OSError:
        reply = "exec"
    if not reply.startswith("pid "):
        become_python()
    pid = int(reply.split()[1])
    tell(pid)
    for signum in pending:
        forward(signum, None)
    reply = server.recv(64).decode()
    if not reply.startswith("exit "):
        print(f"error: the test forkserver went away while running {' '.join(args)}", file=sys.stderr)
        os._exit(1)
    status = int(reply.split()[1])
    if os.WIFSIGNALED(status):  # die of the same signal, as the program did
        if os.WTERMSIG(status) != signal.SIGKILL:
            signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def passed_fds(report: str | None) -> bool:
    """Whether this process was given files beyond its standard streams (pass_fds): only a real interpreter keeps
    them. (The listing's own folder is closed by the time it is checked.)"""
    def is_open(fd: int) -> bool:
        try:
            os.fstat(fd)
            return True
        except OSError:
            return False

    listed = {int(fd) for fd in os.listdir("/proc/self/fd")} - {0, 1, 2}
    return any(is_open(fd) for fd in listed if str(fd) != report)


class Python(subprocess.Popen):
    """subprocess.Popen of `PYTHON ARGS`, whose signals (SIGKILL too) go to the program itself."""

    def __init__(self, python: str, args: list[str], **kwargs) -> None:
        self._program = None
        if python == sys.executable:
            super().__init__([python, *args], **kwargs)
            self._program = self.pid
            return
        read, write = os.pipe()
        env = {**(kwargs.pop("env", None) or os.environ), PID_FD: str(write)}
        try:
            super().__init__([python, *args], env=env, pass_fds=(*kwargs.pop("pass_fds", ()), write), **kwargs)
        finally:
            os.close(write)
        self._pid_pipe = read

    def program_pid(self) -> int:
        if self._program is None:
            data = b""
            while chunk := os.read(self._pid_pipe, 32):
                data += chunk
            os.close(self._pid_pipe)
            self._program = int(data) if data else self.pid
        return self._program

    def send_signal(self, sig: int) -> None:
        self.poll()
        if self.returncode is None:
            try:
                os.kill(self.program_pid(), sig)
            except ProcessLookupError:
                pass

    def __del__(self, *args, **kwargs) -> None:
        if self._program is None and getattr(self, "_pid_pipe", None) is not None:
            os.close(self._pid_pipe)
            self._program = self.pid
        super().__del__(*args, **kwargs)


# --- the server -----------------------------------------------------------------------------------------------


def read_at_import(env: dict[str, str], base: dict[str, str]) -> list[str]:
    """The variables that differ from the server's and that a fork would not honour."""
    changed = {key for key in env.keys() | base.keys() if env.get(key) != base.get(key)}
    return sorted(key for key in changed if key.startswith(IMPORT_TIME) and key not in HONOURED)


def serve(name: str) -> dict:
    """Import what every program needs, then fork one child per request. Returns only in a child: its request."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: go when the pytest worker goes
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind("\0" + name)
    listener.listen(64)  # requests wait in the backlog while the imports run
    server = Server(listener)

    # What cifar_lit's training, evaluation and reports import, which each program would pay for.
    import captum.attr  # noqa: F401
    import jsonargparse  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import PIL.Image  # noqa: F401
    import pytorch_lightning  # noqa: F401
    import torchvision.transforms.v2  # noqa: F401
    import yaml  # noqa: F401

    gc.freeze()  # the children share these objects' pages instead of copying them on the next collection
    while True:
        for key, _ in server.selector.select():
            request = key.data(key.fileobj)
            if request is not None:
                return request


def send(connection: socket.socket, text: str) -> None:
    try:
        connection.send(text.encode())
    except OSError:
        pass  # PYTHON is gone; its connection reads as closed next


class Server:
    """The loop's state: what each event (a request, a PYTHON gone, a program ended) is handled by."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener, self.base, self.base_path = listener, dict(os.environ), list(sys.path[1:])
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, self.accept)
        self.running: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, PYTHON's connection)

    def accept(self, listener: socket.socket) -> dict | None:
        connection, _ = listener.accept()
        try:
            message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
            request = json.loads(message)
        except (OSError, ValueError):
            connection.close()
            return None
        fresh = read_at_import(request["env"], self.base)
        print(f"{'exec, for ' + ' '.join(fresh) if fresh else 'fork'}: {' '.join(request['args'])[:200]!r}",
              file=sys.stderr, flush=True)
        if len(fds) != 3 or fresh:
            for fd in fds:
                os.close(fd)
            send(connection, "exec")
            connection.close()
            return None
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, 0)  # its own group, so a signal to the group reaches what it starts
            self.selector.close()
            self.listener.close()
            connection.close()
            for pidfd, (_, other) in self.running.items():
                os.close(pidfd)
                other.close()
            return {**request, "fds": fds, "base_path": self.base_path, "base_env": self.base}
        for fd in fds:
            os.close(fd)
        try:
            os.setpgid(pid, pid)  # here too: the group exists before PYTHON may signal it
        except OSError:
            pass  # the child made it already
        send(connection, f"pid {pid}")
        pidfd = os.pidfd_open(pid)
        self.running[pidfd] = (pid, connection)
        self.selector.register(pidfd, selectors.EVENT_READ, self.exited)
        self.selector.register(connection, selectors.EVENT_READ, lambda _: self.client_gone(pidfd))
        return None

    def client_gone(self, pidfd: int) -> None:
        """PYTHON was killed: so are its program and what that started."""
        pid, connection = self.running[pidfd]
        self.selector.unregister(connection)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def exited(self, pidfd: int) -> None:
        pid, connection = self.running.pop(pidfd)
        _, status = os.waitpid(pid, 0)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        try:
            self.selector.unregister(connection)
        except KeyError:
            pass  # PYTHON went first (client_gone)
        send(connection, f"exit {status}")
        connection.close()


def become(request: dict) -> tuple[str, str]:
    """Set this fork up as `python ARGS` would start; returns how to run the program and what."""
    for target, fd in enumerate(request["fds"]):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    random.seed()  # a fresh interpreter seeds from the system; a fork would repeat the server's numbers
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    fresh_streams(unbuffered=bool(os.environ.get("PYTHONUNBUFFERED")))
    args = request["args"]
    if args[0] == "-m":
        how, what, argv, first = "module", args[1], ["-m", *args[2:]], os.getcwd()
    elif args[0] == "-c":
        how, what, argv, first = "code", args[1], ["-c", *args[2:]], ""
    elif args[0] == "-":
        how, what, argv, first = "code", sys.stdin.read(), args, ""
    else:
        how, what, argv, first = "script", args[0], args, os.path.dirname(os.path.realpath(args[0]))
    inherited = [entry for entry in request["base_env"].get("PYTHONPATH", "").split(os.pathsep) if entry]
    own = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    rest = [entry for entry in request["base_path"] if entry not in inherited]
    sys.path[:] = [first, *own, *rest]
    sys.argv = argv
    sys.orig_argv = [sys.executable, *args]
    sys.executable = os.environ.get(PYTHON, sys.executable)  # the programs' own `sys.executable ARGS` fork too
    return how, what


def fresh_streams(unbuffered: bool) -> None:
    """sys.stdin, stdout and stderr as Python makes them at start-up for the files now at 0, 1 and 2."""
    for fd, attribute in ((1, "stdout"), (2, "stderr")):
        stream = getattr(sys, attribute)
        raw = io.FileIO(fd, "w", closefd=False)
        fresh = io.TextIOWrapper(raw if unbuffered else io.BufferedWriter(raw), encoding=stream.encoding,
                                 errors=stream.errors, line_buffering=not unbuffered and (os.isatty(fd) or fd == 2),
                                 write_through=unbuffered)
        setattr(sys, attribute, fresh)
        setattr(sys, f"__{attribute}__", fresh)
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                                 encoding=sys.stdin.encoding, errors=sys.stdin.errors)


def run(how: str, what: str) -> None:
    """The program, as the interpreter runs a script, `-c` code or code from standard input, or `-m` a module."""
    import builtins
    import runpy
    import types

    if how == "module":
        runpy._run_module_as_main(what, alter_argv=True)  # what `python -m` runs
        return
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    if how == "script":
        main.__file__ = os.path.abspath(what)
        with io.open_code(main.__file__) as handle:
            code = compile(handle.read(), main.__file__, "exec")
    else:
        code = compile(what, "<string>" if sys.argv[0] == "-c" else "<stdin>", "exec")
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    run(*become(serve(sys.argv[2])))
    # The program's end is the process's: its SystemExit, an uncaught exception or returning here.
