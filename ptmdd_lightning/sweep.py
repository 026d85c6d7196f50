"""``ptmdd-sweep`` moved to :mod:`ptmdd_lightning.studies` (spec, configs, store, execute, collect, cli).

Kept so that ``python -m ptmdd_lightning.sweep`` and ``from ptmdd_lightning.sweep import main`` still work.
"""

from __future__ import annotations

import sys

from ptmdd_lightning.studies.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
