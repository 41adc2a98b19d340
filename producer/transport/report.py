"""What a client's runs left undone, for the exit report: one line per kind of trouble."""

from __future__ import annotations

import shlex
from collections.abc import Iterable

from producer.config import ProducerConfig
from producer.transport.runstate import RunState


def undelivered_report(config: ProducerConfig, states: Iterable[RunState]) -> list[str]:
    """What ``states`` left undone, as it stands on disk; [] when all of it was delivered."""
    lines = []
    stranded = 0
    events = 0
    for state in states:
        if state.failed:
            lines.append(
                f"clearml-relay: run {state.run_id} recorded nothing ({state.problem}); none of it is on disk"
            )
            continue
        if state.lost:
            lines.append(
                f"clearml-relay: run {state.run_id}: {state.lost} of its events could not be recorded "
                "(the errors above say why)"
            )
        if state.refused:
            lines.append(
                f"clearml-relay: run {state.run_id} was not delivered ({state.problem}); its "
                f"{state.unacked()} events stay in {state.outbox.directory if state.outbox else '?'}"
            )
        elif not state.finished() and state.unacked():
            stranded += 1
            events += state.unacked()
    if stranded:
        spool = shlex.quote(str(config.spool_dir))
        lines.append(
            f"clearml-relay: {stranded} run(s) not fully delivered to {config.endpoint} at exit: "
            f"{events} events stay in {config.spool_dir}; deliver them with: clearml-relay sync "
            f"--spool-dir {spool} --endpoint {shlex.quote(config.endpoint)} (or by starting the "
            "next training on the same spool)"
        )
    return lines
