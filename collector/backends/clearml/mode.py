"""Online or offline: which ClearML mode the collector runs in, and why.

Online when a ClearML server is configured the way the ClearML SDK itself reads it (the
``CLEARML_API_HOST`` variable, or an ``api_server`` in the configuration file that
``CLEARML_CONFIG_FILE`` names or in ``~/clearml.conf``); offline otherwise, when ClearML's own
``CLEARML_OFFLINE_MODE`` is set, or when ``--offline`` forces it. The reason is part of the answer
so that the collector can log it at start.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final, NamedTuple

# The SDK's configuration is HOCON; a set api_server key is all this decision needs.
_API_SERVER: Final = re.compile(r"(?:^|[\s{.])api_server\s*[:=]\s*[\"']?[A-Za-z]")
_COMMENT: Final = re.compile(r"^\s*(#|//)")
_TRUE: Final = ("1", "true", "yes", "on")


class Mode(NamedTuple):
    offline: bool
    reason: str


def decide(force_offline: bool, environ: Mapping[str, str] | None = None) -> Mode:
    """The ClearML mode for this collector and the reason for it."""
    env = os.environ if environ is None else environ
    if force_offline:
        return Mode(True, "--offline (CLEARML_RELAY_OFFLINE) forces it")
    if env.get("CLEARML_OFFLINE_MODE", "").strip().lower() in _TRUE:
        return Mode(True, "CLEARML_OFFLINE_MODE is set")
    host = env.get("CLEARML_API_HOST", "").strip()
    if host:
        return Mode(False, f"CLEARML_API_HOST is {host}")
    config = env.get("CLEARML_CONFIG_FILE", "").strip()
    candidates = (
        [Path(config).expanduser()] if config else [Path(env.get("HOME", "~")).expanduser() / "clearml.conf"]
    )
    for path in candidates:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if any(_API_SERVER.search(line) for line in text.splitlines() if not _COMMENT.match(line)):
            return Mode(False, f"{path} configures an api_server")
    where = " or ".join(str(p) for p in candidates)
    return Mode(True, f"no ClearML server is configured (no CLEARML_API_HOST, no api_server in {where})")
