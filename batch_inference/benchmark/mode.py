"""Which size a benchmark runs at, and what it ran on."""

from __future__ import annotations

import os
import platform
from typing import Any

from ..errors import ConfigurationError

#: Environment variable that overrides the mode: ``quick`` or ``full``.
MODE_VARIABLE = "BATCH_INFERENCE_MODE"
MODES = ("quick", "full")
#: Environment variable that overrides :func:`model_dtype`: ``float32``, ``float16``, ``bfloat16``.
DTYPE_VARIABLE = "BATCH_INFERENCE_DTYPE"

#: Largest absolute difference accepted between a batched answer and the model run on the
#: query alone, per dtype of the model (BERT's hidden states are of order 1 to 10). In fp32
#: only the summation order differs (padding changes the shapes the kernels see). fp16 keeps
#: 11 significant bits (a step of 2**-8 near 4) and bf16 8 (2**-5 near 4): after 12 layers
#: the answers differ by a few such steps, so the tolerances are some eight steps.
ANSWER_TOLERANCE: dict[str, float] = {
    "float32": 1e-4,
    "float16": 3e-2,
    "bfloat16": 2.5e-1,
}


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


def model_dtype(mode: str | None = None, device: Any = None) -> Any:
    """The dtype the tutorials run their model in: half precision where a GPU has it.

    In ``full`` mode on a CUDA device: ``torch.bfloat16`` where the GPU
    supports it (Ampere and newer: same range as fp32, no overflow in
    attention scores), else ``torch.float16`` (tensor cores since Volta).
    Everywhere else ``torch.float32``: ``quick`` mode measures the CPU, where
    half precision is slower than fp32 on most processors.
    ``$BATCH_INFERENCE_DTYPE`` overrides (``float32``, ``float16`` or ``bfloat16``).

    Parameters
    ----------
    mode:
        ``"quick"`` or ``"full"``; default :func:`run_mode`.
    device:
        Where the model runs; default ``"cuda"`` if CUDA is available, else ``"cpu"``.
    """
    import torch

    value = os.environ.get(DTYPE_VARIABLE, "").strip().lower()
    if value:
        if value not in ANSWER_TOLERANCE:
            raise ConfigurationError(
                f"{DTYPE_VARIABLE} must be one of {tuple(ANSWER_TOLERANCE)}, "
                f"got {os.environ[DTYPE_VARIABLE]!r}"
            )
        return getattr(torch, value)
    mode = mode or run_mode()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if mode != "full" or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def answer_tolerance(dtype: Any) -> float:
    """:data:`ANSWER_TOLERANCE` for ``dtype`` (a torch dtype or its name).

    Raises
    ------
    ConfigurationError
        No tolerance is set for that dtype.
    """
    name = str(dtype).removeprefix("torch.")
    if name not in ANSWER_TOLERANCE:
        raise ConfigurationError(
            f"no answer tolerance for dtype {dtype!r}; known: {tuple(ANSWER_TOLERANCE)}"
        )
    return ANSWER_TOLERANCE[name]


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
