"""``python -m ops.fuzz``: see :mod:`ops.fuzz`."""

from ops.fuzz.cli import main

raise SystemExit(main())
