"""The warm worker, with real processes: a call through it gives the very outputs, stdout,
stderr and exit code of a fresh process; signals, a dead or stale worker, other code, other
users and parallel calls behave as documented in docs/commands/worker.md."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL_SOURCE
from PIL import Image
from test_interrupts import IMAGES, SLOW_MODEL_SOURCE, SUMMARY, assert_clean

import featviz
from featviz.model.cache import ModelCache, cache_key
from featviz.model.options import ModelRequest
from featviz.worker import protocol

FEATVIZ = [sys.executable, "-m", "featviz"]
# The run's own clock and identity: in every summary, manifest and run record, and nowhere else.
_VARYING = [
    (re.compile(r"in \d+\.\d s \(\d+\.\d\d images/s\)"), "in T s (R images/s)"),
    (re.compile(r"\d{8}T\d{6}\.\d{3}Z-(\w+)-\d+"), r"TIME-\1-PID"),
    (re.compile(r'"elapsed_s": [0-9.e-]+'), '"elapsed_s": E'),
    (re.compile(r"\b1\d{18}\b"), "MTIME_NS"),  # records' stamps of the files they wrote
]


def normalised(text: str, folder: Path | None = None) -> str:
    for pattern, replacement in _VARYING:
        text = pattern.sub(replacement, text)
    return text.replace(str(folder), "FOLDER") if folder else text


def worker_env(runtime: Path, **extra: str) -> dict[str, str]:
    # A worker a failed test leaves behind goes away by itself.
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "FEATVIZ_WORKER_IDLE": "120"}
    env.pop("FEATVIZ_WORKER")  # conftest turns it off for every other test
    return {**env, **extra}


def featviz_run(args, cwd, env, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FEATVIZ, *args], cwd=cwd, env=env, capture_output=True, timeout=180, **kwargs
    )


def status(env) -> dict:
    done = featviz_run(["worker", "status", "--json"], "/", env, check=True)
    return json.loads(done.stdout)


def short_folder() -> Path:
    """A runtime folder right under the temp dir: pytest's own are too deep for a socket's
    path (108 bytes), and root's alone, so another user's connection could not be tried."""
    return Path(tempfile.mkdtemp(prefix="fv-"))


@pytest.fixture
def runtime():
    folder = short_folder()
    yield folder
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def worker():
    """A worker of its own (own runtime folder), started once for the module."""
    folder = short_folder()
    env = worker_env(folder, FEATVIZ_WORKER_IDLE="600")
    started = featviz_run(["worker", "start"], "/", env)
    assert started.returncode == 0, started.stderr
    yield env
    featviz_run(["worker", "stop"], "/", env)
    shutil.rmtree(folder)


def slow_cam(folder: Path, env: dict[str, str], batch_size: int) -> subprocess.Popen:
    """`featviz cam` of the slow model over ``folder/in``, its output read line by line."""
    command = ["cam", "-m", "slow_model.py:build", "--batch-size", str(batch_size), "in"]
    return subprocess.Popen(
        [*FEATVIZ, *command, "-o", "out"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# Factories that change the process's global state as they build: a fresh process has it for
# its one call only; a worker must not carry it into the next.
LEAKY_FACTORIES = {
    "float64_model.py": """
import torch
from tiny_model import build as tiny


def build():
    torch.set_default_dtype(torch.float64)
    return tiny()
""",
    "relu_model.py": """
import torch.nn.functional as F
from tiny_model import build as tiny


def build():
    F.relu = lambda input, inplace=False: F.leaky_relu(input, 0.5)
    return tiny()
""",
    "relu_class_model.py": """
import torch
from tiny_model import build as tiny

torch.nn.ReLU.forward = lambda self, input: input.abs()
build = tiny
""",
    # torch's function-mode stack has no setter: what is left on it cannot be taken off.
    "mode_model.py": """
from torch.overrides import TorchFunctionMode
from tiny_model import build as tiny


class PassThrough(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def build():
    PassThrough().__enter__()
    return tiny()
""",
}


def make_workspace(folder: Path) -> Path:
    folder.mkdir()
    (folder / "tiny_model.py").write_text(TINY_MODEL_SOURCE)
    for name, source in LEAKY_FACTORIES.items():
        (folder / name).write_text(source)
    (folder / "in").mkdir()
    for index in range(4):
        Image.new("RGB", (40 + index, 30), (index * 50, 90, 200)).save(folder / f"in/{index}.png")
    (folder / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def tree(folder: Path) -> dict[str, bytes]:
    return {
        normalised(str(path.relative_to(folder))): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


CASES = {
    "images and a broken file": [["cam", "-m", "tiny_model.py:build", "in", "-o", "out"]],
    "json lines": [["cam", "-m", "tiny_model.py:build", "--json", "in/0.png", "in/1.png"]],
    "skip existing": [
        ["cam", "-m", "tiny_model.py:build", "in", "-o", "out", "-M", "gradcam++"],
        ["cam", "-m", "tiny_model.py:build", "in", "-o", "out", "--skip-existing", "-t", "2"],
    ],
    "maps and a torchvision model": [
        ["maps", "-m", "alexnet", "--weights", "none", "in/0.png", "-o", "out"],
        ["cam", "-m", "alexnet", "--weights", "none", "in/0.png", "-o", "out", "-k", "2"],
    ],
    "usage errors": [
        ["cam", "-m", "tiny_model.py:nope", "in"],
        ["cam", "-m", "tiny_model.py:build", "--alpha", "2", "in"],
        ["cam", "-m", "tiny_model.py:build", "-M", "gradcamm", "in"],
        ["layers", "-m", "tiny_model.py:build", "-l", "features.9"],
    ],
    "paths on stdin": [["cam", "-m", "tiny_model.py:build", "-", "-o", "out", "-q"]],
    **{
        f"after {factory}": [
            ["cam", "-m", f"{factory}:build", "in/0.png", "-o", "leaky"],
            ["cam", "-m", "alexnet", "--weights", "none", "in/1.png", "-o", "out", "--json"],
            ["cam", "-m", "tiny_model.py:build", "in/2.png", "-o", "out"],
            # Its model is built again, as a fresh process builds it: with the change.
            ["cam", "-m", f"{factory}:build", "in/3.png", "-o", "leaky"],
        ]
        for factory in ("float64_model.py", "relu_model.py", "relu_class_model.py")
    },
}


@pytest.mark.parametrize("case", CASES)
def test_a_call_through_the_worker_is_a_fresh_process_byte_for_byte(
    worker, tmp_path: Path, case: str
) -> None:
    warm, cold = make_workspace(tmp_path / "warm"), make_workspace(tmp_path / "cold")
    served = status(worker)["calls"]
    for args in CASES[case]:
        stdin = b"in/2.png\nin/broken.png\nin/3.png\n" if "-" in args else None
        through = featviz_run(args, warm, worker, input=stdin)
        fresh = featviz_run(args, cold, {**worker, "FEATVIZ_WORKER": "off"}, input=stdin)
        assert (through.returncode, normalised(through.stdout.decode())) == (
            fresh.returncode,
            normalised(fresh.stdout.decode()),
        ), args
        assert normalised(through.stderr.decode()) == normalised(fresh.stderr.decode()), args
    assert status(worker)["calls"] == served + len(CASES[case])  # all of them, none bypassed
    warm_files, cold_files = tree(warm), tree(cold)
    assert warm_files.keys() == cold_files.keys()
    for name, data in warm_files.items():
        if name.endswith((".json", ".js")):
            assert normalised(data.decode(), warm) == normalised(cold_files[name].decode(), cold)
        else:
            assert data == cold_files[name], name
    if case == "images and a broken file":
        assert [p.name for p in (warm / "out").glob("*/0/cam/gradcam/features")] == ["features"]
        assert b"Error" not in through.stdout and b"broken.png" in through.stderr


def test_a_changed_checkpoint_or_model_file_is_rebuilt(worker, tmp_path: Path) -> None:
    folder = make_workspace(tmp_path / "w")
    args = ["cam", "-m", "tiny_model.py:build", "--checkpoint", "w.pt", "--json", "in/0.png"]

    def weights(seed: int) -> None:
        torch.manual_seed(seed)
        namespace: dict = {}
        exec(TINY_MODEL_SOURCE, namespace)
        model = namespace["TinyNet"]()
        torch.save(model.state_dict(), folder / "w.pt")

    def answer(env) -> list:
        done = featviz_run(args, folder, env, check=True)
        return [json.loads(line)["predictions"] for line in done.stdout.splitlines()]

    kept_before = len(status(worker)["models"])
    weights(1)
    first = answer(worker)
    weights(2)
    second = answer(worker)
    assert second != first
    assert second == answer({**worker, "FEATVIZ_WORKER": "off"})
    source = (folder / "tiny_model.py").read_text()
    (folder / "tiny_model.py").write_text(source.replace("num_classes: int = 5", "num_classes=5"))
    (folder / "w.pt").write_bytes((folder / "w.pt").read_bytes())  # same weights, newer file
    assert answer(worker) == second
    # Three builds, none reused: each call's files differed from the last one's.
    kept = status(worker)["models"][kept_before:]
    assert [model["uses"] for model in kept] == [1, 1, 1], kept


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_command_cleanly_and_the_worker_stays(
    worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int, code: int
) -> None:
    folder = make_workspace(tmp_path / "w")
    monkeypatch.chdir(folder)  # records name their outputs relative to the run's folder
    (folder / "slow_model.py").write_text(SLOW_MODEL_SOURCE)
    for index in range(IMAGES):
        Image.new("RGB", (48, 36), (index * 6, 100, 9)).save(folder / f"in/{index:02d}.png")
    (folder / "in" / "broken.png").unlink()
    pid = status(worker)["pid"]
    process = slow_cam(folder, worker, batch_size=2)
    watchdog = threading.Timer(90, process.kill)
    watchdog.start()
    try:
        first = process.stdout.readline()
        assert first.startswith("in/0.png: class "), process.stderr.read()
        process.send_signal(signum)
        process.wait(timeout=30)
        stderr = process.stderr.read()
    finally:
        watchdog.cancel()
        process.kill()
    assert process.returncode == code, stderr
    [summary] = stderr.splitlines()
    assert re.fullmatch(SUMMARY + r"out/manifest\.json", summary), summary
    assert summary.startswith("interrupted: ")
    manifest = assert_clean(folder / "out")
    assert manifest["interrupted"] is True and manifest["counts"]["done"] < IMAGES + 4
    assert status(worker)["pid"] == pid
    assert featviz_run(["layers", "-m", "tiny_model.py:build"], folder, worker).returncode == 0
    deadline = time.monotonic() + 10
    # No thread left behind by the calls: the main one, the acceptor, the status call's own.
    while status(worker)["threads"] > 3:
        assert time.monotonic() < deadline, status(worker)["threads"]
        time.sleep(0.1)


def test_the_worker_is_private_to_its_user(worker) -> None:
    state = status(worker)
    socket_path = Path(state["socket"])
    assert socket_path.stat().st_mode & 0o777 == 0o600
    assert socket_path.parent.stat().st_mode & 0o777 == 0o700
    assert socket_path.stat().st_uid == os.getuid()
    system_python = Path("/usr/bin/python3")
    if os.getuid() != 0 or not system_python.exists():
        pytest.skip("needs root and a system Python to connect as another user")
    # Open the folder and socket so the filesystem lets another user reach the socket: the
    # worker itself must still refuse them (SO_PEERCRED).
    runtime = socket_path.parent.parent
    modes = {path: path.stat().st_mode & 0o777 for path in (runtime, socket_path.parent)}
    try:
        for path in modes:
            path.chmod(0o755)
        socket_path.chmod(0o666)
        probe = (
            "import json, socket, struct, sys; s = socket.socket(socket.AF_UNIX); "
            "s.connect(sys.argv[1]); d = json.dumps({'op': 'status'}).encode(); "
            "s.sendall(struct.pack('>I', len(d)) + d); "
            "n = struct.unpack('>I', s.recv(4))[0]; print(s.recv(n).decode())"
        )
        done = subprocess.run(
            [str(system_python), "-c", probe, str(socket_path)],
            user=65534,
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
        )
    finally:
        socket_path.chmod(0o600)
        for path, mode in modes.items():
            path.chmod(mode)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"refused": "uid 65534 is not this worker's user"}


def test_an_unsafe_folder_is_never_used(tmp_path: Path, runtime: Path) -> None:
    (runtime / "featviz").mkdir()
    (runtime / "featviz").chmod(0o755)
    env = worker_env(runtime, FEATVIZ_WORKER="auto")
    folder = make_workspace(tmp_path / "w")
    done = featviz_run(["layers", "-m", "tiny_model.py:build"], folder, env)
    assert done.returncode == 0 and b"features.2" in done.stdout  # in its own process
    assert list((runtime / "featviz").iterdir()) == []
    refused = featviz_run(["worker", "start"], folder, env)
    assert refused.returncode == 1
    assert refused.stderr.decode().splitlines() == [
        f"Error: cannot use the worker's folder: {runtime}/featviz is open to other users "
        "(mode 755)",
        "Hint: set XDG_RUNTIME_DIR to a short folder that only you can enter",
    ]


def test_a_killed_worker_fails_its_call_in_one_line_and_the_next_call_starts_cleanly(
    tmp_path: Path, runtime: Path
) -> None:
    env = worker_env(runtime, FEATVIZ_WORKER="auto")
    folder = make_workspace(tmp_path / "w")
    (folder / "slow_model.py").write_text(SLOW_MODEL_SOURCE)
    assert featviz_run(["worker", "start"], "/", env).returncode == 0
    pid = status(env)["pid"]
    process = slow_cam(folder, env, batch_size=1)
    try:
        assert process.stdout.readline().startswith("in/0.png: class ")
        os.kill(pid, signal.SIGKILL)  # as the OOM killer would
        process.wait(timeout=30)
        stderr = process.stderr.read()
    finally:
        process.kill()
    assert process.returncode == 1
    assert stderr.splitlines()[-1] == (
        f"Error: the featviz worker (pid {pid}) died during this command; its outputs may be "
        "incomplete: run it again (the next call starts afresh)"
    )
    # The dead worker's socket file is still there: the next call sees nobody listens on it.
    assert status(env) == {"running": False} and list(runtime.glob("featviz/*.sock"))
    on = {**env, "FEATVIZ_WORKER": "on"}
    done = featviz_run(["layers", "-m", "tiny_model.py:build"], folder, on)
    assert done.returncode == 0 and status(env) == {"running": False}
    again = featviz_run(["cam", "-m", "tiny_model.py:build", "in/0.png"], folder, env)
    assert again.returncode == 0, again.stderr
    state = status(env)
    assert state["pid"] != pid and state["calls"] == 1
    featviz_run(["worker", "stop"], "/", env)


def test_a_worker_of_other_code_is_replaced_not_used(tmp_path: Path, runtime: Path) -> None:
    env = worker_env(runtime)
    folder = make_workspace(tmp_path / "w")
    assert featviz_run(["worker", "start"], "/", env).returncode == 0
    old = status(env)
    # An upgrade, as far as the caller can tell: featviz's code changed on disk.
    source = Path(featviz.__file__).parent / "run" / "sizes.py"
    times = source.stat()
    try:
        os.utime(source, ns=(times.st_atime_ns, times.st_mtime_ns + 10**9))
        done = featviz_run(["layers", "-m", "tiny_model.py:build"], folder, env)
        assert done.returncode == 0  # answered in its own process
        deadline = time.monotonic() + 60
        while (state := status(env)).get("pid") in (None, old["pid"]):
            assert time.monotonic() < deadline, "no new worker"
            time.sleep(0.2)
        assert state["version"] != old["version"] and state["calls"] == 0
        assert featviz_run(["layers", "-m", "tiny_model.py:build"], folder, env).returncode == 0
        assert status(env)["calls"] == 1
    finally:
        os.utime(source, ns=(times.st_atime_ns, times.st_mtime_ns))
        featviz_run(["worker", "stop"], "/", env)


def test_parallel_calls_queue_and_never_mix_their_output(worker, tmp_path: Path) -> None:
    folder = make_workspace(tmp_path / "w")
    (folder / "slow_model.py").write_text(SLOW_MODEL_SOURCE)
    calls = [
        subprocess.Popen(
            [*FEATVIZ, "cam", "-m", "slow_model.py:build", "--json", *inputs, "-o", f"out{i}"],
            cwd=folder,
            env=worker,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, inputs in enumerate((["in/0.png", "in/1.png"], ["in/2.png", "in/3.png"]))
    ]
    outputs = [call.communicate(timeout=120) for call in calls]
    assert [call.returncode for call in calls] == [0, 0]
    for i, (stdout, _) in enumerate(outputs):
        inputs = [json.loads(line)["input"] for line in stdout.splitlines()]
        assert inputs == [f"in/{2 * i}.png", f"in/{2 * i + 1}.png"]
        assert (folder / f"out{i}" / "manifest.json").is_file()


def test_an_idle_worker_leaves_and_removes_its_socket(runtime: Path) -> None:
    env = worker_env(runtime, FEATVIZ_WORKER_IDLE="1")
    assert featviz_run(["worker", "start"], "/", env).returncode == 0
    socket_path = Path(status(env)["socket"])
    deadline = time.monotonic() + 30
    while socket_path.exists():
        assert time.monotonic() < deadline, "the idle worker did not leave"
        time.sleep(0.2)
    assert status(env) == {"running": False}


def test_off_bypasses_the_worker_and_the_caller_imports_neither_torch_nor_typer(
    worker, tmp_path: Path
) -> None:
    folder = make_workspace(tmp_path / "w")
    served = status(worker)["calls"]
    off = featviz_run(
        ["layers", "-m", "tiny_model.py:build"], folder, {**worker, "FEATVIZ_WORKER": "off"}
    )
    assert off.returncode == 0 and status(worker)["calls"] == served
    probe = (
        "import sys; from featviz.worker.client import delegate; "
        "code = delegate(['featviz', 'layers', '-m', 'tiny_model.py:build'], 'featviz.cli.serve'); "
        "print(code, sorted({'torch', 'typer', 'numpy'} & set(sys.modules)), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=folder, env=worker, capture_output=True, text=True
    )
    assert done.stderr.splitlines()[-1] == "0 []"
    assert "features.2" in done.stdout
    assert status(worker)["calls"] == served + 1


def test_the_model_cache_keeps_recent_models_within_its_budget(tmp_path: Path) -> None:
    def built(out_features: int):
        module = torch.nn.Linear(10, out_features)  # 4 × 11 × out_features bytes
        fields = {"module": module, "name": "m", "weights": "none", "device": "cpu"}
        return lambda: type("Loaded", (), fields)()

    cache = ModelCache(budget=4 * 11 * 30)
    small, other, big = (ModelRequest(f"m{i}.py:build") for i in range(3))
    first = cache.load(small, False, built(10))
    assert cache.load(small, False, built(10)) is first  # kept
    cache.load(other, False, built(20))
    assert cache.nbytes == 4 * 11 * 30
    cache.load(big, False, built(40))  # larger than the whole budget: built, never kept
    assert [m["uses"] for m in cache.describe()] == [2, 1]
    cache.load(small, False, built(10))  # now the most recent
    cache.load(ModelRequest("m3.py:build"), False, built(15))  # the least recent leaves
    assert [m["bytes"] for m in cache.describe()] == [440, 660]
    checkpoint = tmp_path / "w.pt"
    checkpoint.write_bytes(b"1")
    request = ModelRequest("alexnet", checkpoint=checkpoint)
    before = cache_key(request, False)
    checkpoint.write_bytes(b"22")
    assert cache_key(request, False) != before


def exchange(socket_path: str, frame: bytes, fds: list[int] | None = None) -> dict:
    """Send one framed message by hand; the worker's first reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30)  # a reply that never comes fails the test, not the whole run
        conn.connect(socket_path)
        socket.send_fds(conn, [frame], fds or [])
        return protocol.receive(conn)[0]


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def a_call(version: str, **changes) -> bytes:
    """A call as the client sends it (``featviz --version``), with fields changed or removed
    (None)."""
    stream = ["utf-8", "strict", False, False]
    call = {
        "op": "run",
        "version": version,
        "argv": ["featviz", "--version"],
        "prog": "featviz",
        "cwd": "/",
        "env": {"PATH": os.environ["PATH"]},
        "umask": 0o22,
        "stdio": {"stdin": stream, "stdout": stream, "stderr": stream},
        **changes,
    }
    return framed(json.dumps({k: v for k, v in call.items() if v is not None}).encode())


ENV = "'env' must be an object of strings, names without '='"
STDIO = "'stdio' must be {stdin, stdout, stderr: [encoding, errors, line_buffering, write_through]}"
UNKNOWN_CODEC = {name: ["nope", "strict", False, False] for name in ("stdin", "stdout", "stderr")}
# case: (the frame, given the worker's version; the reason of its refusal)
MALFORMED = {
    "an array": (lambda v: framed(b"[]"), "a JSON object expected, not an array"),
    "a string": (lambda v: framed(b'"run"'), "a JSON object expected, not a string"),
    "deep": (lambda v: framed(b"[" * 100_000 + b"]" * 100_000), "nested deeper than 8"),
    "not JSON": (lambda v: framed(b"{op: run}"), "not JSON"),
    "too large": (
        lambda v: struct.pack(">I", 2**24 + 1),
        "a message of 16777217 bytes, over 16777216",
    ),
    "an unknown op": (
        lambda v: framed(b'{"op": "dance the night away"}'),
        'unknown op "dance the night aw…: expected one of run, status, stop',
    ),
    "no op": (lambda v: framed(b"{}"), "unknown op null: expected one of run, status, stop"),
    "version a number": (lambda v: a_call(5), "'version' must be a string"),
    "argv a string": (
        lambda v: a_call(v, argv="featviz -h"),
        "'argv' must be a non-empty list of strings",
    ),
    "argv of numbers": (
        lambda v: a_call(v, argv=[1]),
        "'argv' must be a non-empty list of strings",
    ),
    "no cwd": (lambda v: a_call(v, cwd=None), "'cwd' is missing"),
    "a NUL in cwd": (lambda v: a_call(v, cwd="/\0"), "'cwd' must be a string"),
    "env a list": (lambda v: a_call(v, env=[]), ENV),
    "env of numbers": (lambda v: a_call(v, env={"N": 1}), ENV),
    "env name with =": (lambda v: a_call(v, env={"A=B": "c"}), ENV),
    "umask a string": (
        lambda v: a_call(v, umask="022"),
        "'umask' must be an integer from 0 to 0o777",
    ),
    "no stderr": (lambda v: a_call(v, stdio={"stdin": ["utf-8", "strict", False, False]}), STDIO),
    "an unknown codec": (lambda v: a_call(v, stdio=UNKNOWN_CODEC), STDIO),
}


def test_a_malformed_request_is_refused_and_the_worker_serves_the_next_call(
    worker, tmp_path: Path
) -> None:
    state = status(worker)
    socket_path, version = state["socket"], state["version"]
    for case, (frame, reason) in MALFORMED.items():
        fds = [os.open(os.devnull, os.O_RDWR) for _ in range(3)]
        try:
            reply = exchange(socket_path, frame(version), fds)
        finally:
            for fd in fds:
                os.close(fd)
        assert reply == {"refused": f"malformed request: {reason}"}, case
    assert exchange(socket_path, a_call(version), [0, 1]) == {
        "refused": "malformed request: a call passes 3 descriptors (stdin, stdout, stderr), not 2"
    }
    folder = make_workspace(tmp_path / "w")
    done = featviz_run(["cam", "-m", "tiny_model.py:build", "--json", "in/0.png"], folder, worker)
    assert done.returncode == 0, done.stderr
    after = status(worker)
    assert (after["pid"], after["calls"]) == (state["pid"], state["calls"] + 1)


def test_a_change_that_cannot_be_undone_retires_the_worker_after_its_call(
    tmp_path: Path, runtime: Path
) -> None:
    env = worker_env(runtime)
    warm, cold = make_workspace(tmp_path / "warm"), make_workspace(tmp_path / "cold")
    assert featviz_run(["worker", "start"], "/", env).returncode == 0
    pid = status(env)["pid"]
    calls = [
        ["cam", "-m", "mode_model.py:build", "--json", "in/0.png"],
        ["cam", "-m", "tiny_model.py:build", "--json", "in/1.png"],
    ]
    for args in calls:
        through = featviz_run(args, warm, env, text=True)
        fresh = featviz_run(args, cold, {**env, "FEATVIZ_WORKER": "off"}, text=True)
        assert [through.returncode, *map(normalised, (through.stdout, through.stderr))] == [
            fresh.returncode,
            *map(normalised, (fresh.stdout, fresh.stderr)),
        ], args
        assert through.returncode == 0, through.stderr
        # The first call was the worker's, and its last: the second ran in its own process.
        deadline = time.monotonic() + 30
        while status(env) != {"running": False}:
            assert time.monotonic() < deadline, "the worker did not leave"
            time.sleep(0.1)
    [log] = runtime.glob("featviz/*.log")
    assert (
        f"featviz worker (pid {pid}): call 1 changed what cannot be put back: torch function "
        "mode stack\n"
    ) in log.read_text()
