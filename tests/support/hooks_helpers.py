"""What the hooks' tests share: a finished run as the collector holds it, and a fake trainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from waiting import wait_for

from producer.integrations.ultralytics import RelayHooks

HOOKS_LOGGER = "producer.integrations.ultralytics"
DEADLINE = 60.0


@dataclass
class Trained:
    """A finished training and what the collector holds of it."""

    run: str
    records: list[dict[str, Any]]
    save_dir: Path
    oracle: Any = None  # tests/e2e/test_hooks.py: what the built-in callback logged
    hooks: RelayHooks | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [r["event"] for r in self.records if r["event"]["t"] == kind]

    def status(self) -> tuple[str, str]:
        """The close's status and error (JSON leaves out fields at their default)."""
        (close,) = self.events("close")
        return close.get("status", "completed"), close.get("error", "")


def closed(records: list[dict[str, Any]]) -> bool:
    return any(r["event"]["t"] == "close" for r in records)


def fake_trainer(save_dir: Path, **args: Any) -> SimpleNamespace:
    """What the hooks read of a trainer, for tests that need no training."""
    save_dir.mkdir(parents=True, exist_ok=True)
    best = save_dir / "best.pt"
    best.write_bytes(b"weights")
    return SimpleNamespace(
        save_dir=save_dir,
        args=SimpleNamespace(project="proj", name="fake", resume=False, **args),
        callbacks={},
        plots={},
        validator=SimpleNamespace(plots={}, metrics=SimpleNamespace(results_dict={"fitness": 0.5})),
        best=best,
        epoch=0,
    )


def finished(hooks: RelayHooks, collector: Any, save_dir: Path) -> Trained:
    """Wait for the hooks' run to close and for the collector to apply the close."""
    assert hooks.wait(DEADLINE)
    assert hooks.run is not None
    run = hooks.run.id
    wait_for(lambda: closed(collector.backend.records(run)), DEADLINE, "the close to be applied")
    return Trained(run, collector.backend.records(run), save_dir)


def jpeg(size: int = 2000) -> bytes:
    return b"\xff\xd8" + b"x" * size + b"\xff\xd9"
