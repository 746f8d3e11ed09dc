"""Acceptance with OCS's own code: OCS 0.12.1's barebones and fake-data
agents, fetched from PyPI, run on ocs_nats with only their ``from ocs ...``
lines rewritten, against a real nats-server, the registry, the operation
monitor and the ``ocs`` CLI. No copy of OCS's files is kept in the
repository."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
from conftest import binary, free_port, wait_for

from ocs_nats import OK, OpCode
from ocs_nats.ocs_client import OCSClient

OCS_RELEASE = "0.12.1"
OCS_AGENTS = {
    "barebones": "ocs/agents/barebones/agent.py",
    "fake_data": "ocs/agents/fake_data/agent.py",
}
# `from ocs import x`, `from ocs.ocs_twisted import y`: the only lines changed.
OCS_IMPORT = re.compile(r"^(\s*from\s+)ocs(?=[\s.])")


def port_imports(source: str) -> tuple[str, int]:
    """OCS source with its ``from ocs`` imports pointed at ``ocs_nats``, and
    how many lines that changed."""
    lines = source.splitlines(keepends=True)
    ported = [OCS_IMPORT.sub(r"\1ocs_nats", line) for line in lines]
    return "".join(ported), sum(a != b for a, b in zip(lines, ported, strict=True))


def test_only_from_ocs_import_lines_are_rewritten():
    source = "from ocs import ocs_agent, site_config\nfrom ocs.ocs_twisted import TimeoutLock\n"
    source += "import ocsfoo\nx = 'from ocs import y'\n"
    ported, changed = port_imports(source)
    assert changed == 2
    assert ported.splitlines() == [
        "from ocs_nats import ocs_agent, site_config",
        "from ocs_nats.ocs_twisted import TimeoutLock",
        "import ocsfoo",
        "x = 'from ocs import y'",
    ]


@pytest.fixture(scope="session")
def ocs_agents(tmp_path_factory) -> dict[str, Path]:
    """OCS's agents from its PyPI release, imports ported, as runnable files."""
    download = tmp_path_factory.mktemp("ocs-release")
    fetched = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "--only-binary",
            ":all:",
            "-d",
            download,
            f"ocs=={OCS_RELEASE}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if fetched.returncode != 0:
        pytest.fail(f"cannot fetch ocs=={OCS_RELEASE} from PyPI:\n{fetched.stderr}", False)
    (wheel,) = download.glob(f"ocs-{OCS_RELEASE}-*.whl")
    agents = {}
    with zipfile.ZipFile(wheel) as archive:
        for name, member in OCS_AGENTS.items():
            ported, changed = port_imports(archive.read(member).decode())
            assert changed > 0, f"{member} has no `from ocs` import to rewrite"
            path = download / f"ocs_{name}_agent.py"
            path.write_text(ported)
            agents[name] = path
    return agents


@pytest.fixture
def start_ocs_agent(processes, env):
    def start(name: str, instance_id: str, path: Path, *arguments: str):
        process = processes(
            instance_id, [sys.executable, path, "--instance-id", instance_id, *arguments], env
        )
        ocs = binary("ocs")
        wait_for(
            lambda: (
                (
                    process.popen.poll() is None
                    and subprocess.run(
                        [ocs, "ping", instance_id], env=env, capture_output=True
                    ).returncode
                    == 0
                )
                or process.popen.poll() is not None
            ),
            30,
            f"OCS's {name} agent to answer ping",
        )
        assert process.popen.poll() is None, f"OCS's {name} agent exited:\n{process.output()}"
        return process

    return start


def ocs_cli(env, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary("ocs"), *arguments], env=env, capture_output=True, text=True, timeout=30
    )


def cli_json(env, *arguments: str) -> dict:
    result = ocs_cli(env, *arguments, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def registry_record(client_args, address):
    with OCSClient("registry", args=client_args) as registry:
        return registry.main.status().session["data"].get(address)


def record_in_state(client_args, address, state):
    record = registry_record(client_args, address)
    return record if record is not None and record["state"] == state else None


def test_ocs_barebones_agent_runs_unmodified(
    registry, start_ocs_agent, ocs_agents, env, client_args
):
    agent = start_ocs_agent("barebones", "barebones1", ocs_agents["barebones"], "--mode", "count")
    address = "observatory.barebones1"
    record = wait_for(
        lambda: (
            (r := registry_record(client_args, address))
            and r["op_codes"].get("count") == OpCode.RUNNING
            and r
        ),
        15,
        "the registry to show its count process running",
    )
    assert record["agent_class"] == "BarebonesAgent"
    assert record["op_codes"] == {"count": OpCode.RUNNING, "print": OpCode.NONE}

    # A blocking task through the CLI: params checked by OCS's @param.
    started = ocs_cli(env, "barebones1", "print", "start", "text=hello from ocs")
    assert started.returncode == 0, started.stderr
    printed = cli_json(env, "barebones1", "print", "wait", "--timeout", "10")
    assert printed["session"]["success"] is True, printed
    assert printed["session"]["data"]["text"] == "hello from ocs"
    refused = ocs_cli(env, "barebones1", "print", "start", "text=5", "--json")
    assert refused.returncode != 0
    assert "param 'text' must be str" in json.loads(refused.stdout)["message"], refused.stdout

    # The blocking process through OCS's client: status, stop, wait.
    with OCSClient("barebones1", args=client_args) as client:
        running = wait_for(
            lambda: (r := client.count.status()).session.get("data", {}).get("value") and r,
            10,
            "the count process to publish a value",
        )
        assert running.session["status"] == "running"
        assert client.count.stop().status == OK
        stopped = client.count.wait(timeout=10)
        assert stopped.session["success"] is True, stopped
        assert "Acquisition exited cleanly." in [m[1] for m in stopped.session["messages"]]
        assert client.print(text="direct").session["data"]["text"] == "direct"

    agent.signal(signal.SIGTERM)
    assert agent.wait(15) == 0, agent.output()
    assert wait_for(
        lambda: record_in_state(client_args, address, "left"), 10, "the registry to show it left"
    )


def test_ocs_fake_data_agent_runs_unmodified(
    registry, processes, start_ocs_agent, ocs_agents, env, client_args
):
    monitor_port = free_port()
    processes(
        "operation-monitor",
        [binary("ocs-operation-monitor"), "--listen", f"127.0.0.1:{monitor_port}"],
        env,
    )
    agent = start_ocs_agent("fake_data", "fakeocs1", ocs_agents["fake_data"], "--mode", "acq")
    address = "observatory.fakeocs1"

    # Startup processes: acq (blocking, numpy) and count (Twisted inlineCallbacks).
    def exposition():
        try:
            url = f"http://127.0.0.1:{monitor_port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as reply:
                return reply.read().decode()
        except OSError:
            return ""

    for operation in ("acq", "count"):
        series = (
            f'ocs_operation_code{{agent="{address}",agent_class="FakeDataAgent",'
            f'operation="{operation}",op_type="process"}} {int(OpCode.RUNNING)}'
        )
        wait_for(lambda s=series: s in exposition(), 20, f"the monitor to export {series}")

    with OCSClient("fakeocs1", args=client_args) as client:
        # A Twisted non-blocking task, called directly as OCS scripts do.
        done = client.delay_task(delay=0.3)
        assert done.status == OK and done.session["success"] is True, (done, agent.output())
        assert done.session["data"]["requested_delay"] == 0.3
        failed = client.delay_task(delay=0.1, succeed=False)
        assert failed.session["success"] is False
        assert failed.session["op_code"] == OpCode.FAILED

        # Start and abort through the CLI, wait through the client.
        assert ocs_cli(env, "fakeocs1", "delay_task", "start", "delay=30").returncode == 0
        aborted = ocs_cli(env, "fakeocs1", "delay_task", "abort")
        assert aborted.returncode == 0, aborted.stderr
        ended = client.delay_task.wait(timeout=10)
        assert ended.session["success"] is False, ended
        assert any(m[1].startswith("Aborted after") for m in ended.session["messages"])

        # The blocking acq process fills its session data from numpy's samples.
        acq = wait_for(
            lambda: (r := client.acq.status()).session.get("data", {}).get("fields") and r,
            10,
            "acq to publish samples",
        )
        assert set(acq.session["data"]["fields"]) == {"channel_00", "channel_01"}

        # Both processes stop on request: the Twisted one through the client,
        # the blocking one through the CLI.
        assert client.count.stop().status == OK
        counted = client.count.wait(timeout=10)
        assert counted.session["success"] is True, counted
        assert ocs_cli(env, "fakeocs1", "acq", "stop").returncode == 0
        acquired = cli_json(env, "fakeocs1", "acq", "wait", "--timeout", "10")
        assert acquired["session"]["success"] is True, acquired

    # kill -9: no goodbye, so the registry expires it at its deadline.
    agent.popen.kill()
    agent.wait(5)
    expired = wait_for(
        lambda: record_in_state(client_args, address, "expired"), 20, "the registry to expire it"
    )
    assert expired["expired"] is True
