"""Real components for the Python package's tests: a nats-server with
JetStream, the workspace's registry and ``ocs`` binaries, and Python agents
run as processes. A missing component fails the test loudly."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ocs_nats.connection import args_from_env

REPO = Path(__file__).resolve().parents[2]
BINARIES = REPO / "target" / "debug"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def binary(name: str) -> Path:
    path = BINARIES / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --workspace --bins` first", False)
    return path


class Process:
    """A child in its own process group, stopped (SIGTERM, then SIGKILL) at teardown."""

    def __init__(self, name: str, command: list, env: dict, log_dir: Path):
        self.name = name
        self.log = log_dir / f"{name}.log"
        self._out = open(self.log, "wb")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            [str(part) for part in command],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, sig) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._out.close()

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")


@pytest.fixture
def processes(tmp_path):
    started: list[Process] = []

    def start(name, command, env):
        process = Process(name, command, env, tmp_path)
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture
def nats_url(processes, tmp_path):
    server = shutil.which("nats-server")
    if server is None:
        pytest.fail(
            "nats-server is not on PATH: deploy/test/all installs it "
            "(source deploy/lib/tools.sh; ensure_nats_server)",
            False,
        )
    port = free_port()
    processes(
        "nats-server",
        [server, "-a", "127.0.0.1", "-p", port, "-js", "-sd", tmp_path / "js"],
        dict(os.environ),
    )

    def listening():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    wait_for(listening, 10, "nats-server to listen")
    return f"nats://127.0.0.1:{port}"


@pytest.fixture
def env(nats_url):
    environment = dict(os.environ)
    environment.update(NATS_URL=nats_url, OCS_ADDRESS_ROOT="observatory", LOG_LEVEL="INFO")
    for name in ("OCS_SITE_FILE", "INSTANCE_ID", "NATS_USER", "NATS_PASSWORD", "NATS_CREDS"):
        environment.pop(name, None)
    return environment


@pytest.fixture
def registry(processes, env):
    process = processes(
        "registry",
        [binary("ocs-registry"), "--listen", f"127.0.0.1:{free_port()}", "--wait-time", "2"],
        env,
    )
    ocs = binary("ocs")
    wait_for(
        lambda: (
            subprocess.run(
                [ocs, "ping", "registry"], env=env, capture_output=True, timeout=10
            ).returncode
            == 0
        ),
        20,
        "the registry to answer ping",
    )
    return process


@pytest.fixture
def start_agent(processes, env):
    """Starts the Python fake data agent as ``instance_id``; returns its process."""

    def start(instance_id: str, *arguments: str):
        process = processes(
            instance_id,
            [
                sys.executable,
                "-m",
                "ocs_nats.agents.fake_data",
                "--instance-id",
                instance_id,
                *arguments,
            ],
            env,
        )
        ocs = binary("ocs")
        wait_for(
            lambda: (
                subprocess.run(
                    [ocs, "ping", instance_id], env=env, capture_output=True, timeout=10
                ).returncode
                == 0
            ),
            20,
            f"{instance_id} to answer ping",
        )
        return process

    return start


@pytest.fixture
def client_args(nats_url):
    return args_from_env(nats_url=nats_url, address_root="observatory", nats_creds=None)
