"""
Writing your own batcher: images of different sizes
====================================================

What you will learn: how to write a batcher for requests the built-in ones
do not handle. Here each request is one image of its own height and width;
the model is fully convolutional (an edge detector), so a batch can hold
images of different sizes once they are padded to a common size, and each
caller's output must be cropped back to its own image. We write the batcher,
check that every caller gets exactly what the model gives for its image
alone, and measure how much padding a size-class key saves.

The contract (see :doc:`/batcher/what_is_batcher`): ``inspect`` validates and
describes one request, ``batch`` turns requests into ``predict_batch``
arguments, ``unbatch`` splits the outputs into one result per request, and
``select`` (inherited here) picks which waiting requests go together.

Hardware: any (CPU is fine); a few seconds in both modes.
"""

# %%
# The batcher
# -----------
# ``inspect`` runs in the caller's thread: it refuses what cannot be batched
# (with an error naming the problem) and describes the image. The ``key``
# decides what may share a batch: the channel count and dtype always; with
# ``size_class`` set, also the image's size rounded up to that many pixels,
# so small images are not padded to the size of large ones. ``ImageInfo``
# carries the height and width, from which ``padded_tokens`` counts the
# pixels the model computes (the host's stats report padding with it).

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F

from batch_inference import InvalidRequestError, ModelHost
from batch_inference.batcher.base import Batcher, RequestInfo
from batch_inference.benchmark import (
    closed_loop,
    environment,
    format_environment,
    on_own_thread,
    progress,
    run_mode,
    stats_between,
)

MODE = run_mode()
print(format_environment(environment(MODE, weights="fixed Sobel filters (no training)")))


@dataclass(frozen=True)
class ImageInfo(RequestInfo):
    height: int = 0
    width: int = 0


class ImageBatcher(Batcher):
    """Requests: one ``(channels, height, width)`` float tensor each.

    A batch is padded (zeros, at the bottom and right) to its tallest and
    widest image; outputs ``(batch, k, H, W)`` are cropped back per caller.
    """

    def __init__(self, size_class: int | None = None) -> None:
        self.size_class = size_class

    def inspect(self, args: tuple[Any, ...]) -> ImageInfo:
        if len(args) != 1:
            raise InvalidRequestError(f"expected one image, got {len(args)} arguments")
        (image,) = args
        if not isinstance(image, torch.Tensor) or image.ndim != 3:
            shape = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
            raise InvalidRequestError(f"expected a (channels, height, width) tensor, got {shape}")
        channels, height, width = image.shape
        if height == 0 or width == 0:
            raise InvalidRequestError(f"the image is empty: shape {tuple(image.shape)}")
        key: tuple = (channels, image.dtype)
        if self.size_class is not None:
            key += (-(-height // self.size_class), -(-width // self.size_class))
        return ImageInfo(length=height * width, rows=1, key=key, height=height, width=width)

    def padded_tokens(self, infos: Sequence[RequestInfo]) -> int:
        if not infos:
            return 0
        return len(infos) * max(i.height for i in infos) * max(i.width for i in infos)

    def batch(self, requests: Sequence[tuple[Any, ...]]) -> tuple[tuple[Any, ...], Any]:
        sizes = [tuple(image.shape[1:]) for (image,) in requests]
        height = max(h for h, _ in sizes)
        width = max(w for _, w in sizes)
        batch = torch.stack([
            F.pad(image, (0, width - image.shape[2], 0, height - image.shape[1]))
            for (image,) in requests
        ])
        return (batch,), sizes

    def unbatch(self, outputs: torch.Tensor, context: Any) -> list[torch.Tensor]:
        return [outputs[i, :, :h, :w] for i, (h, w) in enumerate(context)]


# %%
# The model
# ---------
# An edge detector: grey level, then Sobel filters (3x3, zero padding), then
# the gradient magnitude. A 3x3 convolution with zero padding sees the same
# zeros beyond an image's border whether the zeros come from its own padding
# or from the batch's, so cropping gives back exactly the image's own output.


class EdgeDetector:
    def __init__(self) -> None:
        sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self.kernels = torch.stack([sobel_x, sobel_x.T])[:, None]  # (2, 1, 3, 3)

    def predict_batch(self, images: torch.Tensor) -> torch.Tensor:
        grey = images.mean(dim=1, keepdim=True)
        gradients = F.conv2d(grey, self.kernels, padding=1)
        return gradients.pow(2).sum(dim=1, keepdim=True).sqrt()  # (batch, 1, H, W)


# %%
# The requests: images of many sizes
# ----------------------------------
# Discs of random size and position on a noisy background, 16 to 160 pixels a
# side (quick mode: 300 images; full mode: 2000).

COUNT = 2000 if MODE == "full" else 300
generator = torch.Generator().manual_seed(0)


def random_image() -> torch.Tensor:
    height, width = (int(v) for v in torch.randint(16, 161, (2,), generator=generator))
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    cy, cx = float(torch.rand(1, generator=generator)) * height, float(
        torch.rand(1, generator=generator)) * width
    radius = 0.2 * min(height, width) + 4
    disc = (((ys - cy) ** 2 + (xs - cx) ** 2) < radius**2).float()
    noise = 0.1 * torch.rand(3, height, width, generator=generator)
    return disc[None].expand(3, -1, -1) * torch.tensor([0.9, 0.6, 0.2])[:, None, None] + noise


# Made on a thread of their own, like every tensor computation of this page
# outside the host (see "On a CPU" on the model host page).
images = on_own_thread(lambda: [(random_image(),) for _ in range(COUNT)])
model = EdgeDetector()

# %%
# Serve them and check every answer
# ---------------------------------
# 16 client threads send the images through two hosts: one whose batches
# mix every size, one that batches only images of the same 64-pixel size
# class. Each caller's output must equal the model's output for its image
# alone (up to float rounding).

alone = on_own_thread(lambda: [model.predict_batch(image[None])[0] for (image,) in images])


def largest_difference(outputs: list, expected: list) -> float:
    return max(float((got - want).abs().max()) for got, want in zip(outputs, expected))


rows = []
setups = [("any sizes together", ImageBatcher()),
          ("64-pixel size classes", ImageBatcher(size_class=64))]
for name, batcher in progress(setups, "batcher runs", label=lambda setup: setup[0]):
    with ModelHost(model_obj=model, batcher=batcher, max_batch_size=16) as host:
        closed_loop(host.predict, images[:32], clients=16)  # warm-up
        before = host.stats()
        load = closed_loop(host.predict, images, clients=16, keep_outputs=True)
        window = stats_between(before, host.stats())
    worst = on_own_thread(largest_difference, load.outputs, alone)
    assert all(got.shape == expected.shape for got, expected in zip(load.outputs, alone))
    assert worst < 1e-4, worst
    rows.append({
        "batcher": name,
        "images": load.queries,
        "avg batch size": round(window.mean_batch_size, 2),
        "padding efficiency": f"{window.padding_efficiency:.0%}",
        "images/s": round(load.qps),
        "largest difference vs alone": f"{worst:.1e}",
    })

# %%
# Mixing every size makes the batches large but pads most of each one: the
# model computes many pixels for nothing. The size-class key keeps the
# padding small at the price of smaller batches; which wins depends on the
# model and the hardware (the per-call overhead versus the cost per pixel).

pd.DataFrame(rows)

# %%
# A bad request fails alone, in its caller's thread, before it is queued:

with ModelHost(model_obj=model, batcher=ImageBatcher()) as host:
    try:
        host.predict(torch.zeros(32, 32))  # no channel dimension
    except InvalidRequestError as error:
        print(f"refused: {error}")

# %%
# What the callers got
# --------------------
# A few images and the edge maps their callers received from the batched
# host, each cropped back to its own size.

shown = on_own_thread(lambda: [images[i][0].permute(1, 2, 0).clamp(0, 1).numpy()
                               for i in range(4)])
fig, axes = plt.subplots(2, 4, figsize=(9, 4.4))
for column, picture in enumerate(shown):
    axes[0, column].imshow(picture)
    axes[0, column].set_title(f"{picture.shape[0]}x{picture.shape[1]}", fontsize=9)
    axes[1, column].imshow(load.outputs[column][0].numpy(), cmap="magma")
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
axes[0, 0].set_ylabel("request")
axes[1, 0].set_ylabel("result")
fig.suptitle("Images of different sizes, batched together, each cropped back")
fig.tight_layout()
plt.show()
