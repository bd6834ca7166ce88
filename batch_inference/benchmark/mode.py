"""Which size a benchmark runs at, and what it ran on."""

from __future__ import annotations

import os
import platform
from typing import Any

from ..errors import ConfigurationError

#: Environment variable that overrides the mode: ``quick`` or ``full``.
MODE_VARIABLE = "BATCH_INFERENCE_MODE"
MODES = ("quick", "full")


def run_mode() -> str:
    """``"full"`` on a CUDA machine, ``"quick"`` otherwise; ``$BATCH_INFERENCE_MODE`` overrides."""
    value = os.environ.get(MODE_VARIABLE, "").strip().lower()
    if value:
        if value not in MODES:
            raise ConfigurationError(
                f"{MODE_VARIABLE} must be one of {MODES}, got {os.environ[MODE_VARIABLE]!r}"
            )
        return value
    import torch

    return "full" if torch.cuda.is_available() else "quick"


def environment(mode: str | None = None, **extra: Any) -> dict[str, Any]:
    """Device, torch version, threads and mode of this run, plus ``extra`` entries."""
    import torch

    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        device = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    info: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "torch threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "mode": mode or run_mode(),
    }
    info.update(extra)
    return info


def format_environment(info: dict[str, Any]) -> str:
    """``environment()`` as aligned ``key: value`` lines."""
    width = max(len(k) for k in info)
    return "\n".join(f"{k:<{width}} : {v}" for k, v in info.items())
