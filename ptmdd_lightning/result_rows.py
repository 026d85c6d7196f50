"""The vocabulary of a results row (``results.json``) that both the writers and the readers use (stdlib only).

Kept apart from :mod:`ptmdd_lightning.reporting`, which imports torch and the core: the studies read rows in a
process that imports no layer (pyproject.toml, import-linter contracts).
"""

from __future__ import annotations

from typing import Any

__all__ = ["evaluation_labels"]


def evaluation_labels(row: dict[str, Any]) -> str:
    """How a row's models were trained: ``hard``, ``soft (<teacher>)``, with ``, no aug`` when not augmented.

    Args:
        row: a results row; ``labels`` (``"hard"``/``"soft"``), ``teacher`` and ``augment`` are optional (rows
            written before soft-label evaluation have none of them: hard labels, augmented).

    Raises:
        Nothing of its own.
    """
    text = str(row.get("labels", "hard"))
    if row.get("teacher"):
        text += f" ({row['teacher']})"
    if not row.get("augment", True):
        text += ", no aug"
    return text
