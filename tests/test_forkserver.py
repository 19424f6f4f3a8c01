"""tests/forkserver.py: PYTHON runs a program as a real `python` would, on the server's imports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import PYTHON, ROOT, Python

pytestmark = pytest.mark.skipif(PYTHON == sys.executable, reason="no forkserver here (Linux only; or switched off)")

# What a program sees of its start; the interpreter's path and the process group are PYTHON's own.
PROBE = """\
import io, json, os, sys
print(json.dumps({"argv": sys.argv, "path": sys.path, "file": globals().get("__file__"), "name": __name__,
                  "cwd": os.getcwd(), "variable": os.environ.get("PROBE_VARIABLE"), "stdin": sys.stdin.read(),
                  "buffered": [isinstance(stream.buffer, io.BufferedWriter) for stream in (sys.stdout, sys.stderr)],
                  "cifar_lit imported": any(name.startswith("cifar_lit") for name in sys.modules)}))
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[-1]))
"""


def both(command: list[str], tmp_path: Path, **kwargs) -> tuple[subprocess.CompletedProcess, ...]:
    return tuple(subprocess.run([python, *command], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                                **kwargs) for python in (sys.executable, PYTHON))


@pytest.mark.parametrize("form", ["script", "-c", "-m"])
def test_a_program_sees_what_a_fresh_interpreter_shows_it(form, tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    command = {"script": ["probe.py"], "-c": ["-c", PROBE], "-m": ["-m", "probe"]}[form]
    env = {**{key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"},
           "PROBE_VARIABLE": "set", "PYTHONPATH": str(tmp_path / "extra")}
    fresh, forked = both([*command, "a b", "3"], tmp_path, input="from stdin", env=env)
    assert forked.returncode == fresh.returncode == 3
    assert forked.stdout == fresh.stdout and forked.stderr == fresh.stderr == "to stderr\n"
    assert '"buffered": [true, true]' in fresh.stdout
    assert '"cifar_lit imported": false' in forked.stdout, "each program imports the project's code itself"


def test_unbuffered_output_stays_unbuffered(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    fresh, forked = both(["probe.py", "0"], tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert '"buffered": [false, false]' in fresh.stdout and forked.stdout == fresh.stdout


def test_the_program_is_a_fork_unless_a_variable_read_at_import_changes():
    forked = Python(PYTHON, ["-c", "pass"])
    fresh = Python(PYTHON, ["-c", "pass"], env={**os.environ, "TORCH_LOGS": "recompiles"})
    assert forked.wait(timeout=120) == fresh.wait(timeout=120) == 0
    assert forked.program_pid() != forked.pid, "a fork of the server"
    assert fresh.program_pid() == fresh.pid, "PYTHON became the real interpreter"


def test_files_passed_beyond_the_standard_streams_get_the_real_interpreter():
    read, write = os.pipe()
    process = Python(PYTHON, ["-c", f"import os; os.write({write}, b'kept')"], pass_fds=(write,))
    os.close(write)
    assert process.wait(timeout=120) == 0 and os.read(read, 16) == b"kept" and process.program_pid() == process.pid
    os.close(read)


HOLD = "import signal, sys, time; {handler}print('ready', flush=True); time.sleep(60)"


def started(args: list[str], python=Python) -> subprocess.Popen:
    """`PYTHON ARGS` started by `python` (Python or subprocess.Popen), once the program holds."""
    process = python(PYTHON, args, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"
    return process


def popen(python: str, args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([python, *args], **kwargs)  # its signals go to PYTHON, not to the program


def test_a_signal_to_python_reaches_the_program_and_python_exits_as_it_did():
    process = started(["-c", HOLD.format(handler="signal.signal(signal.SIGTERM, lambda *_: sys.exit(7)); ")], popen)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 7
    process = started(["-c", HOLD.format(handler="")], popen)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == -signal.SIGINT, "died of the signal, as the program did"


def test_sigkill_from_python_reaches_the_program_itself():
    process = started(["-c", HOLD.format(handler="")])
    program = process.program_pid()
    process.kill()
    assert process.wait(timeout=60) == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(program, 0)


def gone(pid: int, within: float = 30) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_signal_to_pythons_group_or_its_death_reaches_what_the_program_started(tmp_path):
    """As `timeout` signals, and then kills, a real interpreter's whole job."""
    child = tmp_path / "child.pid"
    starts_a_child = HOLD.format(handler=f"import subprocess; open({str(child)!r}, 'w').write(str(subprocess.Popen("
                                         "['sleep', '60']).pid)); ")
    for kill in (lambda process: os.killpg(os.getpgid(process.pid), signal.SIGTERM), lambda process: process.kill()):
        process = started(["-c", starts_a_child], lambda python, args, **kwargs: popen(
            python, args, start_new_session=True, **kwargs))  # a job of its own, as under `timeout`
        kill(process)
        process.wait(timeout=60)
        assert gone(int(child.read_text())), "the program's own child outlived PYTHON"


def test_without_a_server_python_is_the_real_interpreter():
    result = subprocess.run([PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT, env={**os.environ, "CIFAR_LIT_TEST_FORKSERVER": "none-here"})
    assert result.returncode == 0 and result.stdout.strip().isdigit()
