"""release_after_oom: the failed call's tensors are freed before any retry."""

from __future__ import annotations

import traceback
import weakref
from typing import Any

from batch_inference._memory import release_after_oom


def failing_call(refs: list[weakref.ref]) -> None:
    activations = torch_tensor()
    refs.append(weakref.ref(activations))
    raise MemoryError("CUDA out of memory (simulated)")


def failing_with_a_cycle(refs: list[weakref.ref]) -> None:
    node: dict[str, Any] = {"tensor": torch_tensor()}
    node["self"] = node  # freed only by the cycle collector once the frame lets go
    refs.append(weakref.ref(node["tensor"]))
    raise MemoryError("out of memory")


def torch_tensor() -> Any:
    import torch

    return torch.ones(256, 256)


def caught(call: Any, refs: list[weakref.ref]) -> BaseException:
    try:
        call(refs)
    except MemoryError as error:
        return error
    raise AssertionError("the call did not fail")


def test_the_failed_frames_tensors_are_released() -> None:
    refs: list[weakref.ref] = []
    error = caught(failing_call, refs)
    assert refs[0]() is not None  # the traceback keeps the failed call's frame alive
    release_after_oom(error)
    assert refs[0]() is None


def test_tensors_in_reference_cycles_are_collected() -> None:
    refs: list[weakref.ref] = []
    error = caught(failing_with_a_cycle, refs)
    assert refs[0]() is not None
    release_after_oom(error)
    assert refs[0]() is None


def test_chained_exceptions_are_released_too() -> None:
    refs: list[weakref.ref] = []

    def retry_that_fails_again() -> None:
        try:
            failing_call(refs)
        except MemoryError as first:
            raise RuntimeError("retry failed") from first

    try:
        retry_that_fails_again()
    except RuntimeError as error:
        outer = error
    assert refs[0]() is not None
    release_after_oom(outer)
    assert refs[0]() is None


def test_the_traceback_still_says_where_the_error_was_raised() -> None:
    refs: list[weakref.ref] = []
    error = caught(failing_call, refs)
    release_after_oom(error)
    text = "".join(traceback.format_exception(error))
    assert "in failing_call" in text and "CUDA out of memory (simulated)" in text


def test_the_traceback_can_be_dropped() -> None:
    refs: list[weakref.ref] = []
    error = caught(failing_call, refs)
    release_after_oom(error, keep_traceback=False)
    assert error.__traceback__ is None and refs[0]() is None
