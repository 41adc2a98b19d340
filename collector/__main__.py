"""``python -m collector ...``: the ``clearml-relay`` command line."""

from collector.cli import main

raise SystemExit(main())
