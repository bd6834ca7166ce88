"""Hand a tutorial's measured results to the docs build (as JSON), never typed by hand.

A tutorial calls :func:`save_results`; when the environment variable
``BATCH_INFERENCE_RESULTS_DIR`` names a folder (the docs build sets it), the
results land there as ``<name>.json`` and the site's pages quote them. Run
standalone, a tutorial saves nothing.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError

__all__ = ["RESULTS_DIR_VARIABLE", "load_results", "results_dir", "save_results"]

#: Environment variable naming the folder :func:`save_results` writes into.
RESULTS_DIR_VARIABLE = "BATCH_INFERENCE_RESULTS_DIR"

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def results_dir() -> Path | None:
    """The folder named by ``$BATCH_INFERENCE_RESULTS_DIR``, or ``None`` when unset."""
    value = os.environ.get(RESULTS_DIR_VARIABLE, "").strip()
    return Path(value) if value else None


def _path(directory: Path, name: str) -> Path:
    if not _NAME.match(name):
        raise ConfigurationError(
            f"a results name may hold letters, digits, '_', '.', '-' only, got {name!r}"
        )
    return directory / f"{name}.json"


def save_results(name: str, payload: dict[str, Any]) -> Path | None:
    """Write ``payload`` as ``<results dir>/<name>.json``; return the path.

    Returns ``None`` (and writes nothing) when ``$BATCH_INFERENCE_RESULTS_DIR``
    is unset. ``payload`` must be JSON-serialisable.
    """
    directory = results_dir()
    if directory is None:
        return None
    path = _path(directory, name)
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2, sort_keys=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)  # readers never see half a file
    return path


def load_results(directory: str | os.PathLike[str], name: str) -> dict[str, Any] | None:
    """The payload saved as ``<directory>/<name>.json``, or ``None`` when absent."""
    path = _path(Path(directory), name)
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
