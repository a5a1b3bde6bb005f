"""``python -m fastopt``: the fastopt command line (see :mod:`fastopt.cli`)."""

from .cli import main

raise SystemExit(main())
