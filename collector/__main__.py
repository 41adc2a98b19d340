"""``python -m collector ...``: the ``clearml-relay`` command line."""

from collector.service.cli import main

raise SystemExit(main())
