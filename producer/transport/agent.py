"""``clearml-relay agent``: one per node, it delivers the outboxes their producers left behind.

A training process waits at most its flush timeout for the collector's acks at exit; what was not
acknowledged stays in its outbox under the spool directory. On a GPU node nothing would deliver
that unless a later job reused the spool. The agent watches the spool directory (every training
container of the node mounts the same host path as ``CLEARML_RELAY_SPOOL_DIR``) and delivers each
outbox whose producer is gone, with the producer's own transport (:class:`Client` with adoption):

- the outbox's ``flock`` tells whether its producer is alive: a locked outbox is never touched,
  an unlocked one is locked by the agent for as long as it delivers it, so there are never two
  senders for one outbox (two agents on one spool, or an agent and ``sync``, share it safely);
- a delivered outbox is deleted, as its producer would have; one that is not yet (no collector)
  is retried until it is, and stays on disk if the agent stops;
- the spool is scanned every ``scan_every`` seconds; ``stop`` (SIGTERM) ends it within a second,
  leaving every outbox as it stands on disk for the next agent;
- with several collectors (a comma-separated endpoint list), each outbox goes to the collector it
  records (its run's home, chosen when it was made), also one that has left the list since:
  one client per collector, each adopting only its own outboxes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from dataclasses import dataclass, field

from producer.config import ProducerConfig
from producer.transport.client import Client
from producer.transport.outbox import Outbox, home, list_outboxes
from producer.transport.runstate import RunState

log = logging.getLogger("producer.agent")


@dataclass
class AgentStats:
    """What an agent did: runs it took over, runs delivered (and deleted), runs still under way."""

    adopted: set[str] = field(default_factory=set)
    delivered: set[str] = field(default_factory=set)

    @property
    def pending(self) -> set[str]:
        return self.adopted - self.delivered


class _AgentClient(Client):
    """A client that says, as they happen, which outboxes it takes over and which it delivered."""

    def __init__(self, config: ProducerConfig, stats: AgentStats, scan_every: float) -> None:
        self.agent_stats = stats
        super().__init__(config, adopt=True, at_exit=False, adopt_every=scan_every)

    def adopt(self, outbox: Outbox) -> bool:
        """(Sender thread.) A leftover outbox, locked by the sender: deliver it."""
        taken = super().adopt(outbox)
        if taken:
            left = outbox.last_seq - outbox.acked
            log.info("agent: run %s: its producer is gone, delivering %d events", outbox.run_id, left)
            self.agent_stats.adopted.add(outbox.run_id)
        return taken

    def forget(self, state: RunState) -> None:
        """(Sender thread.) A delivered run, its outbox deleted."""
        super().forget(state)
        log.info("agent: run %s delivered", state.run_id)
        self.agent_stats.delivered.add(state.run_id)


def _targets(config: ProducerConfig) -> list[str]:
    """The collectors to deliver to: those of ``config`` and those the spool's outboxes record."""
    recorded = (home(config.spool_dir, run_id) for run_id in list_outboxes(config.spool_dir))
    return list(dict.fromkeys([*config.endpoints, *(r for r in recorded if r is not None)]))


def run_agent(
    spool_dir: str | os.PathLike[str],
    endpoint: str | None,
    *,
    scan_every: float,
    stop: threading.Event,
    stats: AgentStats | None = None,
) -> AgentStats:
    """Deliver the spool's leftover outboxes until ``stop`` is set; what it did.

    Raises:
        ConfigError: a bad endpoint or spool directory.

    """
    config = ProducerConfig.from_env(endpoint=endpoint, spool_dir=spool_dir)
    stats = stats if stats is not None else AgentStats()
    log.info(
        "agent: delivering the leftover outboxes of %s to %s (a scan every %g s)",
        config.spool_dir,
        config.endpoint,
        scan_every,
    )
    clients: dict[str, _AgentClient] = {}
    try:
        while True:
            for target in _targets(config):  # each collector of the list, and each one recorded
                if target not in clients:
                    log.info("agent: delivering the outboxes whose collector is %s", target)
                    # One of several collectors (or one only a recorded home names) takes only
                    # the outboxes that record it; a single collector takes every leftover.
                    pinned = len(config.endpoints) > 1 or target not in config.endpoints
                    own = dataclasses.replace(config, endpoint=target, pinned=pinned)
                    clients[target] = _AgentClient(own, stats, scan_every)
            if stop.wait(scan_every):
                break
    finally:
        for client in clients.values():
            client.stop()
    log.info(
        "agent: stopped; %d delivered, %d left in %s",
        len(stats.delivered),
        len(stats.pending),
        config.spool_dir,
    )
    return stats
