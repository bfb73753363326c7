"""``python -m vinework``: the same as the ``vinework`` command."""

from .cli import main

raise SystemExit(main())
