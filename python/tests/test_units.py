"""The package's logic without I/O: codes, sessions, params, the site file,
the lock, replies, and the generated code against the .proto."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO

from ocs_nats import OK, OpCode, site_config, wire
from ocs_nats import ocs_pb2 as pb
from ocs_nats.agent_log import AgentLog
from ocs_nats.journal import recover
from ocs_nats.ocs_client import OCSReply, refusal
from ocs_nats.ocs_feed import Block, Feed
from ocs_nats.ocs_twisted import TimeoutLock
from ocs_nats.params import ParamError, check_params, param
from ocs_nats.session import OpSession


def test_the_committed_generated_code_matches_the_proto(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO / 'protocol' / 'proto'}",
            f"--python_out={tmp_path}",
            "ocs/v1/ocs.proto",
        ],
        check=True,
    )
    generated = (tmp_path / "ocs" / "v1" / "ocs_pb2.py").read_text()
    committed = (REPO / "python" / "src" / "ocs_nats" / "ocs_pb2.py").read_text()
    assert committed == generated, (
        "python/src/ocs_nats/ocs_pb2.py is stale: regenerate it with "
        "python -m grpc_tools.protoc -I protocol/proto --python_out=/tmp/gen ocs/v1/ocs.proto "
        "and copy /tmp/gen/ocs/v1/ocs_pb2.py"
    )


@pytest.mark.parametrize(
    ("status", "degraded", "success", "code"),
    [
        ("starting", False, None, OpCode.STARTING),
        ("running", False, None, OpCode.RUNNING),
        ("running", True, None, OpCode.DEGRADED),
        ("stopping", True, None, OpCode.STOPPING),
        ("done", False, True, OpCode.SUCCEEDED),
        ("done", True, False, OpCode.FAILED),
    ],
)
def test_op_codes_follow_ocs_rules(status, degraded, success, code):
    assert wire.op_code(status, degraded, success) == code


def test_a_session_moves_forward_reports_changes_and_survives_the_wire():
    changes = []
    session = OpSession(3, "acq", lambda s, code_changed: changes.append(code_changed))
    session.set_status("running")
    session.set_status("starting")  # never back
    session.degraded = True
    session.data = {"x": [1, 2.5, "three"]}
    session.add_message("hello")
    assert session.status == "running" and session.op_code == OpCode.DEGRADED
    assert changes == [True, True, False, False]
    session.finish(True, "done well")
    assert session.op_code == OpCode.SUCCEEDED
    assert [m[1] for m in session.messages] == [
        'Status is now "starting".',
        'Status is now "running".',
        "hello",
        "done well",
        'Status is now "done".',
    ]
    encoded = session.encoded()
    assert wire.session_from_pb(wire.session_to_pb(encoded)) == encoded


def test_requests_decode_as_protocol_md_says():
    assert wire.decode_request(b"") == ({}, None)
    body = wire.encode_request({"target": 3}, 2.5)
    assert wire.decode_request(body) == ({"target": 3}, 2.5)
    newer = pb.OperationRequest(protocol_version=2).SerializeToString()
    with pytest.raises(wire.RequestError, match="unsupported protocol version 2"):
        wire.decode_request(newer)
    nan = pb.OperationRequest(protocol_version=1, timeout=float("nan")).SerializeToString()
    with pytest.raises(wire.RequestError, match="got NaN"):
        wire.decode_request(nan)
    with pytest.raises(wire.RequestError, match="malformed request"):
        wire.decode_request(b"\xff\xff\xff")


def test_params_are_declared_defaulted_checked_and_cast():
    @param("target", default=5, type=int, check=lambda n: n < 10)
    @param("rate", default=1.0, type=float)
    @param("mode", choices=["a", "b"])
    @param("name", default="x", cast=str.upper)
    def op(session, params):
        return True, ""

    assert check_params(op, {"mode": "a", "rate": 2}) == {
        "target": 5,
        "rate": 2.0,
        "mode": "a",
        "name": "x",
    }
    assert check_params(op, {"mode": "b", "name": "y"})["name"] == "Y"
    for params, reason in [
        ({}, "required param 'mode' is missing"),
        ({"mode": "c"}, "must be one of ['a', 'b']"),
        ({"mode": "a", "target": True}, "must be int, not bool"),
        ({"mode": "a", "target": 11}, "fails its check"),
        ({"mode": "a", "other": 1}, "unexpected param(s): other"),
    ]:
        with pytest.raises(ParamError, match=re.escape(reason)):
            check_params(op, params)

    @param("_")
    def none(session, params):
        return True, ""

    assert check_params(none, {}) == {}
    with pytest.raises(ParamError):
        check_params(none, {"x": 1})

    def undeclared(session, params):
        return True, ""

    assert check_params(undeclared, {"anything": 1}) == {"anything": 1}


def test_a_dead_incarnations_running_session_becomes_failed():
    stored = pb.StoredSession(
        protocol_version=1,
        incarnation="dead",
        session=wire.session_to_pb(OpSession(0, "acq").encoded()),
    )
    recovered, changed = recover(stored, "alive", now=100.0)
    assert changed
    assert (recovered.session.status, recovered.session.success) == ("done", False)
    assert recovered.session.op_code == OpCode.FAILED
    assert "The agent died while this operation was starting" in recovered.session.messages[-2].text
    own, changed = recover(recovered, "alive")
    assert not changed and own is recovered


def test_the_site_file_gives_the_instance_its_arguments(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(
        "hub:\n"
        "  nats-url: nats://10.0.0.1:4222\n"
        "hosts:\n"
        "  daq:\n"
        "    agent-instances:\n"
        "      - agent-class: PyFakeDataAgent\n"
        "        instance-id: pyfaker1\n"
        "        arguments: [[--mode, acq], [--num-channels, '3']]\n"
    )
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="idle")
    parser.add_argument("--num-channels", type=int, default=2)
    args = site_config.parse_args(
        agent_class="PyFakeDataAgent",
        parser=parser,
        args=["--site-file", str(site), "--instance-id", "pyfaker1", "--num-channels", "4"],
    )
    assert (args.mode, args.num_channels, args.nats_url) == ("acq", 4, "nats://10.0.0.1:4222")
    assert args.agent_class == "PyFakeDataAgent"


def test_a_bad_site_file_names_file_line_and_reason(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("hosts:\n  daq:\n    agent-instances:\n      - instance-id: x\n")
    with pytest.raises(
        site_config.SiteError, match=r"site.yaml:4: an agent instance has no agent-class"
    ):
        site_config.SiteConfig.load(site)
    site.write_text("hosts: [\n")
    with pytest.raises(site_config.SiteError, match=r"site.yaml:2: not YAML"):
        site_config.SiteConfig.load(site)
    with pytest.raises(site_config.SiteError, match="cannot read"):
        site_config.SiteConfig.load(tmp_path / "missing.yaml")


def test_the_timeout_lock_names_its_holder_and_times_out():
    lock = TimeoutLock()
    assert lock.acquire(job="acq")
    assert lock.job == "acq"
    started = time.monotonic()
    assert not lock.acquire(timeout=0.1)
    assert time.monotonic() - started >= 0.09
    got = []

    def other():
        with lock.acquire_timeout(timeout=2, job="other") as acquired:
            got.append((acquired, lock.job))

    thread = threading.Thread(target=other)
    thread.start()
    time.sleep(0.05)
    assert lock.release_and_acquire(timeout=2)
    thread.join()
    assert got == [(True, "other")]
    assert lock.job == "acq"
    lock.release()
    assert lock.job is None


def test_a_permissions_violation_names_what_was_refused():
    assert refusal(
        'nats: Permissions Violation for Publish to "observatory.faker1.ops.start.acq"'
    ) == ("publish", "observatory.faker1.ops.start.acq")
    assert refusal('permissions violation for subscription to "_INBOX.viewer.abc.*"') == (
        "subscription",
        "_INBOX.viewer.abc.*",
    )
    assert refusal("nats: Authorization Violation") is None
    assert refusal('Permissions Violation for Publish to "unterminated') is None


def test_replies_show_as_ocs_shows_them():
    session = OpSession(7, "count").encoded()
    session.update(status="done", success=True, end_time=session["start_time"] + 2.0)
    text = repr(OCSReply(OK, 'Operation "count" is currently not running (SUCCEEDED).', session))
    lines = text.splitlines()
    assert lines[0] == 'OCSReply: OK : Operation "count" is currently not running (SUCCEEDED).'
    assert lines[1].startswith("  count[session=7]; status=done without error")
    assert lines[1].endswith("took 2.0 s")
    assert lines[2] == "  messages (1 of 1):"
    assert lines[-1] == "  other keys in .session: op_code, degraded, data"
    assert repr(OCSReply(OK, "No session active.", {})).endswith("(no session -- op has never run)")


def test_examples_and_docs_point_at_files_that_exist():
    assert Path(REPO / "python" / "src" / "ocs_nats" / "agents" / "fake_data.py").exists()


def test_json_logs_are_one_object_per_line():
    import json
    import logging

    from ocs_nats.ocs_agent import _JsonFormatter

    record = logging.LogRecord(
        "ocs_nats.agent.x", logging.WARNING, __file__, 1, "a %s", ("b",), None
    )
    line = json.loads(_JsonFormatter().format(record))
    assert (line["level"], line["target"], line["message"]) == (
        "WARNING",
        "ocs_nats.agent.x",
        "a b",
    )


def test_a_reply_too_large_for_the_server_says_so_without_its_data():
    import asyncio

    from ocs_nats import ERROR
    from ocs_nats.ocs_agent import OCSAgent, _reply

    class Server:
        max_payload = 2048

    class Message:
        reply = "_INBOX.x"
        sent = None

        async def respond(self, body):
            Message.sent = body

    agent = OCSAgent(argparse.Namespace(address_root="observatory", instance_id="big"))
    agent._nc = Server()
    session = OpSession(0, "acq").encoded()
    session["data"] = {"blob": "x" * 10_000}
    asyncio.run(agent._respond(Message(), _reply(OK, "Session active.", session)))
    reply = pb.OperationReply.FromString(Message.sent)
    assert reply.status == ERROR
    assert "over the server's limit of 2048 bytes" in reply.message
    assert reply.session.data == b""
    asyncio.run(agent._respond(Message(), _reply(OK, "x" * 4096, None)))
    assert not pb.OperationReply.FromString(Message.sent).HasField("session")


def test_agent_log_formats_as_txaio_and_keeps_preformatted_text(caplog):
    import logging

    log = AgentLog(logging.getLogger("ocs_nats.agent.test"))
    with caplog.at_level(logging.DEBUG, logger="ocs_nats.agent.test"):
        log.info("read {value} K on {channel}", value=4.2, channel="ch1")
        log.warn("a dict as text: {'a': 1}")
        log.debug("missing {name}", other=1)
    assert [r.getMessage() for r in caplog.records] == [
        "read 4.2 K on ch1",
        "a dict as text: {'a': 1}",
        "missing {name} {'other': 1}",
    ]
    assert [r.levelname for r in caplog.records] == ["INFO", "WARNING", "DEBUG"]


def test_a_block_encodes_as_ocs_and_refuses_other_fields():
    block = Block("temps", ["ch0", "ch1"])
    assert block.empty()
    block.append({"timestamp": 1.0, "data": {"ch0": 0.1, "ch1": 0.2}})
    block.extend({"timestamps": [2.0], "data": {"ch0": [0.3], "ch1": [0.4]}, "influxdb_tags": {}})
    assert block.encoded() == {
        "block_name": "temps",
        "data": {"ch0": [0.1, 0.3], "ch1": [0.2, 0.4]},
        "influxdb_tags": {},
        "timestamps": [1.0, 2.0],
    }
    with pytest.raises(ValueError, match="has fields"):
        block.append({"timestamp": 3.0, "data": {"ch0": 0.5}})
    block.data["ch1"].append(9.9)
    with pytest.raises(ValueError, match="one value per timestamp"):
        block.encoded()
    block.clear()
    assert block.empty() and block.data == {"ch0": [], "ch1": []}


def test_a_feed_numbers_its_messages_and_has_no_buffer():
    feed = Feed("temps", record=True, agg_params={"frame_length": 60}, buffer_time=1.0)
    assert [feed.next_seq() for _ in range(3)] == [1, 2, 3]
    feed.flush_buffer()
    assert feed.next_seq() == 4
    with pytest.raises(ValueError):
        Feed("bad name")


def test_an_ocs_access_policy_is_refused_with_the_reason(capsys):
    with pytest.raises(SystemExit):
        site_config.parse_args(args=["--instance-id", "a1", "--access-policy", "site"])
    assert "NATS user permissions" in capsys.readouterr().err
    parsed = site_config.parse_args(args=["--instance-id", "a1", "--access-policy", "none"])
    assert parsed.access_policy == "none"


def test_a_user_gets_inboxes_of_its_own():
    from ocs_nats.connection import args_from_env, connect_options

    assert wire.inbox_prefix("pyfaker") == "_INBOX.pyfaker"
    assert wire.inbox_prefix("a.b") is None and wire.inbox_prefix(None) is None
    args = args_from_env(nats_user="viewer", nats_password="secret", nats_creds=None)
    assert connect_options(args, "test")["inbox_prefix"] == "_INBOX.viewer"
    assert "inbox_prefix" not in connect_options(args_from_env(nats_user=None), "test")


def test_a_credential_s_user_is_the_name_in_its_jwt(tmp_path):
    from ocs_nats.connection import creds_user_name

    creds = tmp_path / "faker1.creds"
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ."
        "eyJuYW1lIjoiZmFrZXIxIiwic3ViIjoiVUFCQyJ9.c2ln\n"
        "------END NATS USER JWT------\n"
    )
    assert creds_user_name(str(creds)) == "faker1"
    creds.write_text("-----BEGIN NATS USER JWT-----\nnot a jwt\n")
    assert creds_user_name(str(creds)) is None
    assert creds_user_name(str(tmp_path / "missing.creds")) is None
