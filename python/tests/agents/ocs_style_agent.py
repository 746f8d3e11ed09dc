"""An agent written the way OCS agents are, with Twisted's inlineCallbacks
and autobahn's sleep; only the ``ocs`` imports are changed to ``ocs_nats``."""

from autobahn.twisted.util import sleep as dsleep
from twisted.internet import threads
from twisted.internet.defer import inlineCallbacks

from ocs_nats import ocs_agent, site_config
from ocs_nats.ocs_twisted import TimeoutLock


class TwistedAgent:
    def __init__(self, agent):
        self.agent = agent
        self.lock = TimeoutLock()

    @ocs_agent.param("duration", default=0.5, type=float)
    @inlineCallbacks
    def wait_a_bit(self, session, params):
        """wait_a_bit(duration=0.5)

        **Task** - Sleep in the reactor, then ask a thread for the answer.
        """
        session.set_status("running")
        slept = 0.0
        while slept < params["duration"]:
            if session.status != "running":
                return False, "Aborted"
            yield dsleep(0.05)
            slept += 0.05
        answer = yield threads.deferToThread(lambda: 6 * 7)
        session.data = {"answer": answer}
        return True, f"Waited {params['duration']} s"

    @inlineCallbacks
    def _abort_wait(self, session, params):
        yield dsleep(0)
        return True, "Abort requested"


if __name__ == "__main__":
    args = site_config.parse_args(agent_class="TwistedAgent")
    agent, runner = ocs_agent.init_site_agent(args)
    twisted_agent = TwistedAgent(agent)
    agent.register_task(
        "wait_a_bit", twisted_agent.wait_a_bit, aborter=twisted_agent._abort_wait, blocking=False
    )
    runner.run(agent, auto_reconnect=True)
