"""Heartbeat cadence of a Python agent while its operations burn CPU.

Starts a nats-server and an agent (this file, run with ``--agent``) whose
``burn`` task spins pure-Python loops in worker threads, listens to the
agent's heartbeats on the bench's own clock, and prints the intervals'
percentiles: first idle, then with ``--threads`` CPU-bound operations
running. Every wait is bounded and every process is stopped at the end.

    .tools/venv/bin/python python/benches/heartbeat_cadence.py --seconds 30 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from ocs_nats import ocs_agent, site_config, wire
from ocs_nats.connection import args_from_env
from ocs_nats.ocs_client import OCSClient


def run_agent(argv):
    args = site_config.parse_args(agent_class="BurnAgent", args=argv)
    agent, runner = ocs_agent.init_site_agent(args)

    @ocs_agent.param("seconds", default=10.0, type=float)
    def burn(session, params):
        """Spin pure-Python loops (holding the GIL) for ``seconds``."""
        session.set_status("running")
        deadline = time.monotonic() + params["seconds"]
        n = 0
        while time.monotonic() < deadline and session.status == "running":
            for i in range(10_000):
                n += i * i % 7
        return True, f"burned {n}"

    for i in range(8):
        agent.register_task(f"burn{i}", burn)
    runner.run(agent)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def intervals(url, address, seconds):
    import nats

    nc = await nats.connect(url)
    arrivals = []

    async def on_beat(msg):
        arrivals.append(time.monotonic())

    await nc.subscribe(wire.heartbeat_subject(address), cb=on_beat)
    await asyncio.sleep(seconds)
    await nc.close()
    return [b - a for a, b in itertools.pairwise(arrivals)]


def percentiles(values):
    values = sorted(values)

    def pick(q):
        return values[min(len(values) - 1, int(q * len(values)))]

    return {
        "n": len(values),
        "p50": pick(0.50),
        "p99": pick(0.99),
        "max": values[-1],
        "mean": statistics.fmean(values),
    }


def main():
    if "--agent" in sys.argv:
        return run_agent([a for a in sys.argv[1:] if a != "--agent"])
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    server = shutil.which("nats-server")
    if server is None:
        sys.exit("nats-server is not on PATH (source deploy/lib/tools.sh; ensure_nats_server)")
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    workdir = tempfile.mkdtemp(prefix="ocs-bench-")
    children = []
    try:
        children.append(
            subprocess.Popen(
                [server, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", workdir],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        time.sleep(0.5)
        env = dict(os.environ, NATS_URL=url, LOG_LEVEL="WARNING")
        children.append(
            subprocess.Popen(
                [sys.executable, __file__, "--agent", "--instance-id", "burner"], env=env
            )
        )
        address = "observatory.burner"
        args = args_from_env(nats_url=url, address_root="observatory")
        deadline = time.monotonic() + 20
        while True:
            try:
                client = OCSClient("burner", args=args)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        idle = percentiles(asyncio.run(intervals(url, address, options.seconds)))
        for i in range(options.threads):
            getattr(client, f"burn{i}").start(seconds=options.seconds + 5)
        loaded = percentiles(asyncio.run(intervals(url, address, options.seconds)))
        client.close()
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
        for name, figures in (("idle", idle), (f"{options.threads} CPU-bound threads", loaded)):
            print(
                f"heartbeat interval, {name}: n={figures['n']} p50={figures['p50'] * 1000:.1f} ms "
                f"p99={figures['p99'] * 1000:.1f} ms max={figures['max'] * 1000:.1f} ms"
            )
    finally:
        for child in reversed(children):
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
