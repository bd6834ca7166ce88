"""Moving a batch to its worker's device before ``predict_batch``.

One stager per worker, made at worker start with :func:`make_stager`:

* the prefetcher thread calls ``args, ready = stager.stage(args)``: the
  batch's tensors (nested in tuples, lists and dicts) go to the device;
* the model thread calls ``ready.wait()`` just before ``predict_batch``: on
  CUDA, the model's stream then waits for the copy (the host thread does not).

For a CUDA device, :class:`PinnedStager` copies through reused page-locked
(pinned) host buffers on a CUDA stream of its own, so that the copy is truly
asynchronous and overlaps the batch that is running on the model's stream.
For any other device (``"cpu"``, ``"meta"``, ``"mps"``...) :class:`DeviceMover`
calls ``tensor.to(device)`` and returns a handle with nothing to wait for.

:func:`batch_inference._devices.to_output_device` does the way back.

Threads: ``stage`` is meant for one thread (the worker's prefetcher); calls
from several threads are serialised by a lock (correct, not faster). A
:class:`Ready` handle may be waited on from any thread, once or more.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from ._devices import as_device, map_tensors
from .errors import ConfigurationError

__all__ = [
    "NO_WAIT",
    "DeviceMover",
    "HostBuffers",
    "PinnedStager",
    "Ready",
    "make_stager",
]

#: Bytes each staged tensor's start is aligned to in a pinned buffer.
_ALIGN_BYTES = 64


class Ready:
    """What the model thread waits on before it runs a staged batch.

    This base handle has nothing to wait for (the data is already in place).
    """

    def wait(self, stream: Any = None) -> None:
        """Make ``stream`` (default: the current stream) wait until the batch is in place."""


#: The handle of a batch that needs no waiting.
NO_WAIT = Ready()


class DeviceMover:
    """Stager for a device without CUDA streams: ``tensor.to(device)``, nothing to wait for.

    With ``device=None`` nothing moves (the model takes the batch where the
    batcher built it).
    """

    def __init__(self, device: Any = None) -> None:
        self.device = None if device is None else as_device(device)

    def stage(self, args: Any) -> tuple[Any, Ready]:
        """The batch's tensors on the device (nested structures kept), and :data:`NO_WAIT`."""
        target = self.device
        if target is None:
            return args, NO_WAIT
        return map_tensors(args, lambda t: t if t.device == target else t.to(target)), NO_WAIT


def make_stager(device: Any) -> DeviceMover | PinnedStager:
    """The stager for one worker's ``device``: pinned staging on CUDA, ``.to()`` elsewhere.

    Raises
    ------
    ConfigurationError
        ``device`` is not a torch device, or is a CUDA device on a machine
        without CUDA (or without that device index).
    """
    if device is None:
        return DeviceMover(None)
    target = as_device(device)
    if target.type != "cuda":
        return DeviceMover(target)
    if not torch.cuda.is_available():
        raise ConfigurationError(f"device {device!r} needs CUDA, which is not available here")
    if target.index is not None and target.index >= torch.cuda.device_count():
        raise ConfigurationError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return PinnedStager(target)


class HostBuffers:
    """Host buffers reused batch after batch: one flat byte buffer per slot, grown when short.

    :meth:`views` packs a batch's tensors into the next slot's buffer (each
    start aligned to 64 bytes) and returns one view per tensor, of the same
    shape and dtype. Slots are used in turn, so a batch never overwrites the
    buffer of the batch staged just before it; the caller makes sure the copy
    out of a slot is over before that slot comes round again (:class:`PinnedStager`
    waits on the event of that slot's last copy). Not thread-safe on its own:
    :class:`PinnedStager` uses it under its lock.

    Parameters
    ----------
    slots:
        How many buffers are used in turn (2: double buffering).
    pin_memory:
        Allocate page-locked memory (needs CUDA); ``False`` for plain memory.
    """

    def __init__(self, slots: int = 2, pin_memory: bool = True) -> None:
        if slots < 1:
            raise ConfigurationError(f"slots must be >= 1, got {slots!r}")
        self.pin_memory = pin_memory
        self._buffers: list[torch.Tensor | None] = [None] * slots
        self._next = 0
        #: How many buffers were allocated so far (grows only when a batch does not fit).
        self.allocations = 0

    @property
    def slot(self) -> int:
        """The slot the next :meth:`views` call fills."""
        return self._next

    def views(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Views of the next slot's buffer shaped as ``tensors`` (contents not copied)."""
        offsets, total = [], 0
        for tensor in tensors:
            offsets.append(total)
            nbytes = tensor.numel() * tensor.element_size()
            total += -(-nbytes // _ALIGN_BYTES) * _ALIGN_BYTES
        slot = self._next
        self._next = (slot + 1) % len(self._buffers)
        buffer = self._buffers[slot]
        if buffer is None or buffer.numel() < total:
            size = max(total, 2 * buffer.numel() if buffer is not None else 0, _ALIGN_BYTES)
            buffer = torch.empty(size, dtype=torch.uint8, pin_memory=self.pin_memory)
            self._buffers[slot] = buffer
            self.allocations += 1
        views = []
        for tensor, start in zip(tensors, offsets):
            nbytes = tensor.numel() * tensor.element_size()
            flat = buffer[start : start + nbytes].view(tensor.dtype)
            views.append(flat.view(tensor.shape))
        return views


class _CudaReady(Ready):
    """The copy's event; ``wait`` makes a stream wait on it and guards the memory."""

    def __init__(self, event: Any, tensors: list[torch.Tensor], device: torch.device) -> None:
        self._event = event
        self._tensors = tensors
        self._device = device
        self._lock = threading.Lock()

    def wait(self, stream: Any = None) -> None:
        with self._lock:
            tensors, self._tensors = self._tensors, []
        if stream is None:
            stream = torch.cuda.current_stream(self._device)
        stream.wait_event(self._event)
        for tensor in tensors:
            # The tensors were allocated on the copy stream: tell the caching allocator
            # that the model's stream uses them, so it does not hand their memory out
            # again before the model's work on them is done.
            tensor.record_stream(stream)


class PinnedStager:
    """Stager for a CUDA device: pinned, double-buffered, on its own stream.

    ``stage(args)`` copies each CPU tensor of the batch into a reused pinned
    host buffer (:class:`HostBuffers`, two slots, grown when a batch does not
    fit), then issues ``to(device, non_blocking=True)`` on the stager's own
    CUDA stream and records an event. Before a slot is reused, the host waits
    for the event of the copy that last read it (two batches back, long done
    in steady state). Tensors already on the device are passed as they are;
    tensors on another device are moved with a plain ``.to(device)``.

    The returned handle's ``wait(stream=None)`` makes ``stream`` (default: the
    current stream of the model thread) wait on that event: the model thread
    does not block, its stream does.
    """

    def __init__(self, device: Any, slots: int = 2) -> None:
        self.device = as_device(device)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.stream = torch.cuda.Stream(device=self.device)
        self.buffers = HostBuffers(slots, pin_memory=True)
        self._events: list[Any] = [None] * slots
        self._lock = threading.Lock()

    def stage(self, args: Any) -> tuple[Any, Ready]:
        """The batch on the device (copies in flight) and the handle to wait on."""
        with self._lock:
            leaves: list[torch.Tensor] = []

            def collect(tensor: torch.Tensor) -> torch.Tensor:
                if tensor.device.type == "cpu":
                    leaves.append(tensor)
                return tensor

            map_tensors(args, collect)
            if not leaves:
                return map_tensors(args, self._move_other), NO_WAIT
            slot = self.buffers.slot
            previous = self._events[slot]
            if previous is not None:
                previous.synchronize()  # the copy out of this slot is over: reuse it
            staged: dict[int, torch.Tensor] = {}
            for tensor, view in zip(leaves, self.buffers.views(leaves)):
                view.copy_(tensor)
                staged[id(tensor)] = view
            moved: list[torch.Tensor] = []
            with torch.cuda.stream(self.stream):

                def copy(tensor: torch.Tensor) -> torch.Tensor:
                    view = staged.get(id(tensor))
                    if view is None:
                        return self._move_other(tensor)
                    out = view.to(self.device, non_blocking=True)
                    moved.append(out)
                    return out

                result = map_tensors(args, copy)
                event = torch.cuda.Event()
                event.record(self.stream)
            self._events[slot] = event
            return result, _CudaReady(event, moved, self.device)

    def _move_other(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if tensor.device == self.device else tensor.to(self.device)
