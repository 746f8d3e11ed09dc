"""A fake data agent in Python, written as an OCS agent is: the Rust
FakeDataAgent's operations (``acq``, ``count``, ``delay_task``), with only
the imports changed from OCS's.

    python -m ocs_nats.agents.fake_data --instance-id pyfaker1
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from ocs_nats import ocs_agent, site_config
from ocs_nats.ocs_twisted import TimeoutLock


class FakeDataAgent:
    def __init__(self, agent, num_channels=2, sample_rate=10.0):
        self.agent = agent
        self.log = agent.log
        self.lock = TimeoutLock()
        self.channel_names = [f"channel_{i:02d}" for i in range(num_channels)]
        self.sample_rate = max(1e-6, sample_rate)
        self.take_data = False
        agent.register_feed("false_temperatures", record=True)

    @ocs_agent.param("_")
    def acq(self, session, params):
        """acq()

        **Process** - Acquire fake data until stopped, publishing it on the
        ``false_temperatures`` feed and keeping the latest in ``session.data``.
        """
        with self.lock.acquire_timeout(timeout=0, job="acq") as acquired:
            if not acquired:
                return False, f"Could not acquire lock: held by {self.lock.job}"
            session.set_status("running")
            self.take_data = True
            values = {name: 0.0 for name in self.channel_names}
            while self.take_data and session.status == "running":
                now = time.time()
                for name in values:
                    values[name] += random.gauss(0.0, 0.1)
                self.agent.publish_to_feed(
                    "false_temperatures",
                    {"block_name": "temps", "timestamp": now, "data": dict(values)},
                )
                session.data = {"fields": dict(values), "timestamp": now}
                time.sleep(1.0 / self.sample_rate)
        return True, "Acquisition exited cleanly."

    def _stop_acq(self, session, params):
        if not self.take_data:
            return False, "acq is not running"
        self.take_data = False
        return True, "Stopping acquisition."

    @ocs_agent.param("target", default=5, type=int, check=lambda n: 0 <= n <= 100)
    @ocs_agent.param("interval", default=0.1, type=float, check=lambda s: 0 <= s <= 10)
    def count(self, session, params):
        """count(target=5, interval=0.1)

        **Task** - Count from 1 to ``target``, one every ``interval`` seconds.
        """
        session.set_status("running")
        for n in range(1, params["target"] + 1):
            if session.status != "running":
                return False, f"Aborted at {n - 1}."
            session.data = {"count": n}
            time.sleep(params["interval"])
        return True, f"Counted to {params['target']}."

    @ocs_agent.param("delay", default=5.0, type=float, check=lambda d: 0 <= d <= 3600)
    @ocs_agent.param("succeed", default=True, type=bool)
    async def delay_task(self, session, params):
        """delay_task(delay=5, succeed=True)

        **Task** (non-blocking, a coroutine) - Wait ``delay`` seconds, then
        succeed or fail as asked; abortable.
        """
        session.set_status("running")
        deadline = time.monotonic() + params["delay"]
        while time.monotonic() < deadline:
            if session.status != "running":
                return False, "Aborted."
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        session.data = {"requested_delay": params["delay"]}
        if params["succeed"]:
            return True, "Exited normally."
        return False, "Failed as requested."

    async def _abort_delay(self, session, params):
        return True, "Abort requested."


def make_parser(parser=None):
    if parser is None:
        parser = argparse.ArgumentParser()
    group = parser.add_argument_group("Agent Options")
    group.add_argument("--mode", default="idle", choices=["idle", "acq"])
    group.add_argument("--num-channels", type=int, default=2)
    group.add_argument("--sample-rate", type=float, default=10.0)
    return parser


def main(args=None):
    args = site_config.parse_args(agent_class="PyFakeDataAgent", parser=make_parser(), args=args)
    agent, runner = ocs_agent.init_site_agent(args)
    fake = FakeDataAgent(agent, num_channels=args.num_channels, sample_rate=args.sample_rate)
    agent.register_process("acq", fake.acq, fake._stop_acq, startup=args.mode == "acq")
    agent.register_task("count", fake.count)
    agent.register_task("delay_task", fake.delay_task, aborter=fake._abort_delay, blocking=False)
    runner.run(agent, auto_reconnect=True)


if __name__ == "__main__":
    main()
