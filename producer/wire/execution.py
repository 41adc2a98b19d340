"""Where a run executes (``RunOpen.context``): becomes the ClearML task's execution section."""

from __future__ import annotations

from typing import Annotated

import msgspec

_Text = Annotated[str, msgspec.Meta(max_length=1024 * 1024)]
_Short = Annotated[str, msgspec.Meta(max_length=255)]


class GitInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    repository: _Short = ""
    commit: _Short = ""
    branch: _Short = ""
    diff: _Text = ""


class ExecutionContext(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Where the run executes: becomes the ClearML task's execution section."""

    argv: list[_Text] = []
    script: _Text = ""
    cwd: _Text = ""
    host: _Short = ""
    pid: int = 0
    user: _Short = ""
    python: _Short = ""
    packages: list[_Short] = []
    git: GitInfo | None = None


__all__ = ["ExecutionContext", "GitInfo"]
