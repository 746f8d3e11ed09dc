"""The Python agent and client against a real nats-server, the registry and
the ``ocs`` CLI's conformance kit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import nats
import pytest
from conftest import binary, free_port, wait_for
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from ocs_nats import ERROR, OK, TIMEOUT, OpCode, wire
from ocs_nats import ocs_pb2 as pb
from ocs_nats.ocs_client import ControlClient, NotPermitted, OCSClient


def stored_session(nats_url, key):
    """The session journal's last entry under ``key``, read as any client would."""

    async def read():
        nc = await nats.connect(nats_url)
        try:
            kv = await nc.jetstream().key_value(wire.SESSIONS_BUCKET)
            return pb.StoredSession.FromString((await kv.get(key)).value)
        except (KeyNotFoundError, BucketNotFoundError, NotFoundError):
            return None
        finally:
            await nc.close()

    return asyncio.run(read())


def registry_record(client_args, address):
    with OCSClient("registry", args=client_args) as registry:
        return registry.main.status().session["data"].get(address)


def test_a_task_runs_through_the_client_as_in_ocs(registry, start_agent, client_args):
    start_agent("pyfaker1")
    with OCSClient("pyfaker1", args=client_args) as client:
        reply = client.count(target=3, interval=0.01)
        assert reply.status == OK, reply
        assert reply.msg == 'Operation "count" is currently not running (SUCCEEDED).'
        assert reply.session["success"] is True
        assert reply.session["data"] == {"count": 3}
        assert reply.session["op_code"] == OpCode.SUCCEEDED
        assert [m[1] for m in reply.session["messages"]][-1] == 'Status is now "done".'
        assert "Counted to 3." in [m[1] for m in reply.session["messages"]]
        assert repr(reply).startswith(
            'OCSReply: OK : Operation "count" is currently not running (SUCCEEDED).\n'
            "  count[session=0]; status=done without error"
        )
        assert repr(client) == "OCSClient('pyfaker1')"
        assert "Count from 1 to" in client.count.__doc__


def test_params_are_checked_before_anything_runs(registry, start_agent, client_args):
    start_agent("pyfaker2")
    with OCSClient("pyfaker2", args=client_args) as client:
        bad_type = client.count.start(target="three")
        assert bad_type.status == ERROR
        assert bad_type.msg.startswith("Param error for \"count\": param 'target' must be int")
        assert bad_type.session == {}
        out_of_range = client.count.start(target=1000)
        assert out_of_range.msg == (
            "Param error for \"count\": param 'target'=1000 fails its check"
        )
        unknown = client.count.start(target=1, colour="red")
        assert unknown.msg == 'Param error for "count": unexpected param(s): colour'
        assert client.count.status().msg == "No session active."
        never = client.count.status()
        assert repr(never).endswith("(no session -- op has never run)")


def test_a_process_runs_until_stopped_and_the_registry_shows_it(registry, start_agent, client_args):
    start_agent("pyfaker3")
    with OCSClient("pyfaker3", args=client_args) as client:
        started = client.acq.start()
        assert (started.status, started.msg) == (OK, 'Started process "acq".')
        wait_for(lambda: client.acq.status().session["status"] == "running", 5, "acq to run")
        wait_for(
            lambda: (
                (registry_record(client_args, "observatory.pyfaker3") or {})
                .get("op_codes", {})
                .get("acq")
                == OpCode.RUNNING
            ),
            10,
            "the registry to show acq running",
        )
        running = client.acq.status()
        assert set(running.session["data"]["fields"]) == {"channel_00", "channel_01"}
        again = client.acq.start()
        assert (again.status, again.msg) == (ERROR, 'Operation "acq" already in progress.')
        assert client.acq.abort if hasattr(client.acq, "abort") else True
        stop = client.acq.stop()
        assert (stop.status, stop.msg) == (OK, 'Requested stop on process "acq".')
        done = client.acq.wait(timeout=10)
        assert done.status == OK and done.session["success"] is True, done
        assert client.acq.stop().msg == "The operation is already done"
        record = registry_record(client_args, "observatory.pyfaker3")
        assert record["agent_class"] == "PyFakeDataAgent"
        assert record["state"] == "alive"


def test_a_coroutine_task_waits_times_out_and_aborts(registry, start_agent, client_args):
    start_agent("pyfaker4")
    with OCSClient("pyfaker4", args=client_args) as client:
        assert client.delay_task.start(delay=30).status == OK
        timed_out = client.delay_task.wait(timeout=0.3)
        assert timed_out.status == TIMEOUT
        assert timed_out.msg == 'Operation "delay_task" still running; wait timed out.'
        assert client.delay_task.abort().msg == 'Requested abort on task "delay_task".'
        ended = client.delay_task.wait(timeout=5)
        assert ended.msg == 'Operation "delay_task" is currently not running (FAILED).'
        assert ended.session["success"] is False
        failing = client.delay_task(delay=0, succeed=False)
        assert failing.session["success"] is False
        assert "Failed as requested." in [m[1] for m in failing.session["messages"]]


def test_the_agent_passes_the_conformance_kit(registry, start_agent, env):
    agent = start_agent("pyfaker5")
    result = subprocess.run(
        [
            binary("ocs"),
            "conformance",
            "pyfaker5",
            "--exercise",
            "count",
            "--param",
            "target=2",
            "--pid",
            str(agent.pid),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr + agent.output()
    assert agent.wait(10) == 0


def test_a_run_its_process_died_in_is_failed_by_the_next_incarnation(
    registry, start_agent, client_args
):
    first = start_agent("pyfaker6")
    with OCSClient("pyfaker6", args=client_args) as client:
        assert client.delay_task.start(delay=60).status == OK
        # The journal holds the running session before the process dies.
        wait_for(
            lambda: (
                (stored := stored_session(client_args.nats_url, "observatory.pyfaker6.delay_task"))
                and stored.session.status == "running"
            ),
            10,
            "the journal to hold the running session",
        )
        first.signal(signal.SIGKILL)
        first.wait(10)
    second = start_agent("pyfaker6")
    with OCSClient("pyfaker6", args=client_args) as client:
        status = wait_for(
            lambda: (reply := client.delay_task.status()).session and reply,
            10,
            "the last session to be restored",
        )
        session = status.session
        assert (session["status"], session["success"]) == ("done", False), status
        assert session["op_code"] == OpCode.FAILED
        assert any(
            "The agent died while this operation was running" in m[1] for m in session["messages"]
        )
        # A new run gets the next session id.
        assert client.count.start(target=1, interval=0).session["session_id"] >= 1
        second.stop()


def test_sigterm_says_goodbye_and_the_registry_shows_it_left(registry, start_agent, client_args):
    agent = start_agent("pyfaker7")
    wait_for(
        lambda: registry_record(client_args, "observatory.pyfaker7"), 10, "the registry to know it"
    )
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0
    record = wait_for(
        lambda: (
            (r := registry_record(client_args, "observatory.pyfaker7"))
            and r["state"] == "left"
            and r
        ),
        10,
        "the registry to show it left",
    )
    assert record["expired"] is True


def test_the_host_manager_runs_stops_and_takes_down_a_python_agent(
    registry, processes, env, client_args, tmp_path
):
    program = Path(sys.executable).with_name("ocs-nats-fake-data-agent")
    assert program.exists(), f"{program}: install the package (deploy/test/python does)"
    site = tmp_path / "site.yaml"
    site.write_text(
        f"agent-classes:\n  PyFakeDataAgent: {program}\n"
        f"  PyModuleAgent: [{sys.executable}, -m, ocs_nats.agents.fake_data]\n"
        "hosts:\n  pyhost:\n    agent-instances:\n"
        "      - agent-class: PyFakeDataAgent\n"
        "        instance-id: pyhm1\n"
        "        arguments: [[--mode, acq]]\n"
        "        restart: {delay: 0.2, stop-grace: 3}\n"
        "      - agent-class: PyModuleAgent\n"
        "        instance-id: pyhm2\n"
    )
    manager = processes(
        "host-manager",
        [
            binary("ocs-host-manager"),
            "--site-file",
            site,
            "--site-host",
            "pyhost",
            "--instance-id",
            "hm-py",
            "--listen",
            f"127.0.0.1:{free_port()}",
        ],
        env,
    )
    ocs = binary("ocs")

    def answers():
        return (
            subprocess.run(
                [ocs, "ping", "pyhm1"], env=env, capture_output=True, timeout=10
            ).returncode
            == 0
        )

    wait_for(answers, 30, "the host manager to start the Python agent")
    # A class may also be an interpreter with its first arguments (python -m).
    wait_for(
        lambda: (
            subprocess.run([ocs, "ping", "pyhm2"], env=env, capture_output=True).returncode == 0
        ),
        30,
        "the host manager to start the agent run as python -m",
    )
    with OCSClient("pyhm1", args=client_args) as client:
        # --mode acq from the site file starts acq at startup.
        wait_for(lambda: client.acq.status().session.get("status") == "running", 10, "acq")
        pid = client._api.pid
    down = subprocess.run(
        [ocs, "host", "down", "pyhm1", "--manager", "hm-py"], env=env, capture_output=True
    )
    assert down.returncode == 0, down.stdout + down.stderr
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 15, "the agent to stop")
    record = wait_for(
        lambda: (
            (r := registry_record(client_args, "observatory.pyhm1")) and r["state"] == "left" and r
        ),
        10,
        "the registry to show it left",
    )
    assert record["expired"] is True
    up = subprocess.run(
        [ocs, "host", "up", "pyhm1", "--manager", "hm-py"], env=env, capture_output=True
    )
    assert up.returncode == 0, up.stdout + up.stderr
    wait_for(answers, 30, "the agent to come back")
    with OCSClient("pyhm1", args=client_args) as client:
        pid = client._api.pid
    # The manager dies without a word: its agents die with it.
    manager.signal(signal.SIGKILL)
    manager.wait(10)
    try:
        wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 10, "the agent to die")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def test_an_ocs_style_twisted_agent_runs_on_the_agents_loop(registry, processes, env, client_args):
    agent = processes(
        "twisted-agent",
        [
            sys.executable,
            Path(__file__).with_name("agents") / "ocs_style_agent.py",
            "--instance-id",
            "tw1",
        ],
        env,
    )
    ocs = binary("ocs")
    wait_for(
        lambda: subprocess.run([ocs, "ping", "tw1"], env=env, capture_output=True).returncode == 0,
        20,
        "the Twisted agent to answer",
    )
    with OCSClient("tw1", args=client_args) as client:
        done = client.wait_a_bit(duration=0.3)
        assert done.status == OK and done.session["success"] is True, (done, agent.output())
        assert done.session["data"] == {"answer": 42}
        assert client.wait_a_bit.start(duration=30).status == OK
        assert client.wait_a_bit.abort().status == OK
        aborted = client.wait_a_bit.wait(timeout=5)
        assert aborted.session["success"] is False
        assert "Aborted" in [m[1] for m in aborted.session["messages"]]
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0, agent.output()


def test_registry_status_reassembles_a_fleet_too_large_for_one_message(registry, client_args):
    fleet = 2500

    async def beat_once():
        nc = await nats.connect(client_args.nats_url)
        for i in range(fleet):
            beat = pb.Heartbeat(
                protocol_version=1,
                agent_address=f"observatory.load{i}",
                agent_class="LoadAgent",
                incarnation=str(uuid.uuid4()),
                seq=1,
                op_codes=[pb.OperationCode(op_name="acq", op_code=3, op_type="process")],
                host="loadhost",
                pid=i + 1,
                interval_ms=1000,
            )
            await nc.publish(f"observatory.load{i}.feeds.heartbeat", beat.SerializeToString())
        await nc.flush()
        await nc.close()

    asyncio.run(beat_once())
    with ControlClient("registry", args=client_args) as control:
        wait_for(
            lambda: (
                control.records(classes=["LoadAgent"], summary_only=True)[1].get("agents") == fleet
            ),
            20,
            "the registry to know the whole fleet",
        )
        _, _, raw = control.request("status", "main")
        assert wire.RECORDS_IN_PAGES in raw["data"], "the fleet should not fit one message"
    with OCSClient("registry", args=client_args) as registry_client:
        status = registry_client.main.status()
    data = status.session["data"]
    loaded = {address: record for address, record in data.items() if "load" in address}
    assert len(loaded) == fleet
    record = loaded["observatory.load7"]
    assert record["agent_class"] == "LoadAgent"
    assert record["op_codes"] == {"acq": 3} or record["op_codes"] == {"acq": 7}
    assert record["pid"] == 8
    assert set(record) >= {"expired", "time_expired", "last_updated", "op_codes", "state"}


def test_the_operation_monitor_exports_a_python_agents_operations(
    registry, processes, start_agent, env, client_args
):
    port = free_port()
    processes(
        "operation-monitor",
        [binary("ocs-operation-monitor"), "--listen", f"127.0.0.1:{port}"],
        env,
    )
    start_agent("pyfaker8")
    with OCSClient("pyfaker8", args=client_args) as client:
        assert client.acq.start().status == OK
    series = (
        'ocs_operation_code{agent="observatory.pyfaker8",agent_class="PyFakeDataAgent",'
        'operation="acq",op_type="process"} 3'
    )

    def exposition():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
                return reply.read().decode()
        except OSError:
            return ""

    wait_for(lambda: series in exposition(), 20, f"the monitor to export {series}")
    assert (
        'ocs_operation_code{agent="observatory.pyfaker8",agent_class="PyFakeDataAgent",'
        'operation="count",op_type="task"} 1'
    ) in exposition()


def test_the_python_client_drives_the_rust_fake_data_agent(registry, processes, env, client_args):
    processes("rustfaker1", [binary("ocs-fake-data-agent"), "--instance-id", "rustfaker1"], env)
    ocs = binary("ocs")
    wait_for(
        lambda: (
            subprocess.run([ocs, "ping", "rustfaker1"], env=env, capture_output=True).returncode
            == 0
        ),
        20,
        "the Rust agent to answer ping",
    )
    with OCSClient("rustfaker1", args=client_args) as client:
        started = client.delay_task.start(delay=0.3, succeed=True)
        assert started.status == OK, started
        assert started.session["op_name"] == "delay_task"
        done = client.delay_task.wait(timeout=10)
        assert done.status == OK and done.session["success"] is True, done
        assert done.msg == 'Operation "delay_task" is currently not running (SUCCEEDED).'
        status = client.delay_task.status()
        assert status.session["status"] == "done"
        assert status.session["session_id"] == done.session["session_id"]
    record = wait_for(
        lambda: registry_record(client_args, "observatory.rustfaker1"),
        10,
        "the registry to list the Rust agent",
    )
    assert record["agent_class"] == "FakeDataAgent" and record["state"] == "alive"
    assert record["op_codes"]["delay_task"] == OpCode.SUCCEEDED


def test_a_python_agent_runs_on_a_credential_minted_for_it(processes, tmp_path):
    """Against a server in operator mode (``ocs-credentials init``), the
    Python agent logs in with a credential minted for its instance id, keeps
    its journal in its own keys, and replies reach a client logged in with
    an operator's credential: both take their inboxes from their JWT's name,
    the only ones the server lets them read."""
    tool = binary("ocs-credentials")
    auth = tmp_path / "auth"

    def mint(role, name):
        out = subprocess.run(
            [tool, "--dir", auth, "mint", "--role", role, name],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    subprocess.run([tool, "--dir", auth, "init"], capture_output=True, check=True)
    (tmp_path / "nats.conf").write_text("include auth/server.conf\n")
    port = free_port()
    processes(
        "nats-server",
        [
            *("nats-server", "-c", tmp_path / "nats.conf", "-a", "127.0.0.1", "-p", port),
            *("-js", "-sd", tmp_path / "js"),
        ],
        dict(os.environ),
    )
    url = f"nats://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "OCS_"))}
    env.update(NATS_URL=url, LOG_LEVEL="INFO")
    processes(
        "registry",
        [binary("ocs-registry"), "--listen", f"127.0.0.1:{free_port()}"],
        dict(env, NATS_CREDS=mint("registry", "registry")),
    )
    agent = processes(
        "pyfaker7",
        [sys.executable, "-m", "ocs_nats.agents.fake_data", "--instance-id", "pyfaker7"],
        dict(env, NATS_CREDS=mint("agent", "pyfaker7")),
    )
    from ocs_nats.connection import args_from_env, connect_options

    operator = args_from_env(nats_url=url, nats_creds=mint("operator", "alice"), nats_user=None)
    assert connect_options(operator, "test")["inbox_prefix"] == "_INBOX.alice"

    def answers():
        try:
            with OCSClient("pyfaker7", args=operator) as client:
                return client.count(target=2, interval=0.01)
        except Exception:
            return None

    reply = wait_for(answers, 30, "pyfaker7 to answer the operator")
    assert reply.status == OK and reply.session["data"] == {"count": 2}, reply
    record = wait_for(
        lambda: registry_record(operator, "observatory.pyfaker7"),
        15,
        "the registry to list pyfaker7",
    )
    assert record["state"] == "alive", record
    assert "Permissions Violation" not in agent.output()

    # A viewer may look but not start: the server's refusal fails the call
    # at once, not after the request's timeout.
    viewer = args_from_env(nats_url=url, nats_creds=mint("viewer", "bob"), nats_user=None)
    with OCSClient("pyfaker7", args=viewer) as client:
        assert client.count.status().status == OK
        with pytest.raises(
            NotPermitted, match=r"may not publish to observatory\.pyfaker7\.ops\.start\."
        ):
            client.count.start(target=2)
        assert client.count.status().status == OK
