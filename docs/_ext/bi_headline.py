"""Measured numbers for the Markdown pages, written from the tutorials' own runs.

``conf.py`` points ``$BATCH_INFERENCE_RESULTS_DIR`` at ``docs/_generated``;
sphinx-gallery runs the tutorials at ``builder-inited``; the BERT tutorial
saves ``bert_embedding.json`` there and the overhead tutorial ``overhead.json``.
Right after (a later ``builder-inited`` handler, before any page is read) this
extension turns them into ``docs/_generated/headline.md`` (the home page's
headline, included by ``index.md``) and ``docs/_generated/overhead.md`` (a lone
caller's cost, included by ``how_it_works.md``). No number on those pages is
typed by hand.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sphinx.errors import ExtensionError

from batch_inference.benchmark.results import RESULTS_DIR_VARIABLE, load_results

RESULTS_NAME = "bert_embedding"
HEADLINE_FILE = "headline.md"
TUTORIAL_DOC = "/auto_tutorials/plot_bert_embedding"
OVERHEAD_NAME = "overhead"
OVERHEAD_FILE = "overhead.md"
OVERHEAD_DOC = "/auto_tutorials/plot_overhead"

NOT_EXECUTED = (
    "*This build did not execute the tutorials, so it quotes no measured result. "
    "Build the docs with `tox -e docs` to measure it on your machine.*\n"
)


def _row(rows: list[dict[str, Any]], method: str, size: Any) -> dict[str, Any] | None:
    return next((r for r in rows if r["Method"] == method
                 and str(r["Max Batch Size Setting"]) == str(size)), None)


def headline_markdown(payload: dict[str, Any]) -> str:
    """Markdown for the home page from the BERT tutorial's saved results."""
    rows = payload["rows"]
    env = payload["environment"]
    base = _row(rows, "Baseline", "/")
    bucket = _row(rows, "Bucket Sequence Batcher", 32)
    seq = _row(rows, "Sequence Batcher", 32)
    if base is None or bucket is None or seq is None:
        raise ExtensionError(f"the BERT results lack a row: {[r['Method'] for r in rows]}")
    low, high = payload["lengths"]
    rounds = payload.get("rounds", 1)
    median = f" Each time is the median of {rounds} interleaved runs." if rounds > 1 else ""
    lines = [
        f"**Measured when these docs were built:** {base['Query Count']} BERT-embedding "
        f"queries of {low} to {high} tokens, sent by {env['clients']} client threads. The "
        f"**Bucket Sequence Batcher** served them at **{bucket['Queries/s']:.1f} queries/s, "
        f"{bucket['Speed-up']:.2f}x** the throughput of calling `predict_batch` one query at "
        f"a time ({base['Queries/s']:.1f} queries/s); the Sequence Batcher (max batch 32) "
        f"reached {seq['Speed-up']:.2f}x.{median}",
        "",
        f"Hardware: {env['device']}, torch {env['torch']} with {env['torch threads']} threads; "
        f"{payload['mode']} mode; weights: {payload['weights']}. Details, latency and figures: "
        f"{{doc}}`the BERT benchmark <{TUTORIAL_DOC}>`.",
        "",
        "| Method | Max batch size | Avg batch size | Execution time | Queries/s | Speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['Method']} | {r['Max Batch Size Setting']} | {r['Avg Batch Size']:.2f} | "
            f"{r['Execution Time']:.2f} s | {r['Queries/s']:.1f} | {r['Speed-up']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def overhead_markdown(payload: dict[str, Any]) -> str:
    """Markdown for a lone caller's cost, from the overhead tutorial's saved results."""
    env = payload["environment"]
    threads = max(payload["thread_requests_per_s"], key=int)
    rps = payload["thread_requests_per_s"][threads]
    floor = payload["thread_floor_requests_per_s"][threads]
    return (
        f"*Measured when these docs were built* ({env['device']}, with a model that does "
        f"nothing): a lone caller's median latency was "
        f"{payload['lone_caller_hosted_ms'] * 1e3:.1f} µs through the host and "
        f"{payload['lone_caller_direct_ms'] * 1e3:.1f} µs calling `predict_batch` directly, so "
        f"the host added **{payload['lone_caller_added_ms'] * 1e3:.1f} µs**; {threads} client "
        f"threads got {rps:,.0f} requests/s through it, "
        f"{rps / floor:.0%} of a bare hand-off between threads with no host "
        f"({floor:,.0f} requests/s). Details: {{doc}}`the overhead page <{OVERHEAD_DOC}>`.\n"
    )


#: Each generated file: (results name, file name, renderer, tutorial that saves the results).
GENERATED = (
    (RESULTS_NAME, HEADLINE_FILE, headline_markdown, "plot_bert_embedding.py"),
    (OVERHEAD_NAME, OVERHEAD_FILE, overhead_markdown, "plot_overhead.py"),
)


def forget_results(results_dir: Path) -> None:
    """Delete the saved results, so that only this build's run can provide them."""
    for name, *_ in GENERATED:
        (results_dir / f"{name}.json").unlink(missing_ok=True)


def write_headline(results_dir: Path, executed: bool) -> str:
    """Write every generated file into ``results_dir``; return the headline's text.

    A build that executes the tutorials has deleted the saved results first
    (:func:`forget_results`), so the pages quote this build's runs. A build
    that does not execute them (``plot_gallery=0``) shows the tutorial pages of
    the last run, and quotes that run's results where they are still there.

    Raises
    ------
    ExtensionError
        When the tutorials were executed but one of them saved no results.
    """
    texts = []
    for name, file_name, render, tutorial in GENERATED:
        payload = load_results(results_dir, name)
        if payload is not None:
            text = render(payload)
        elif executed:
            raise ExtensionError(
                f"the tutorials ran but {results_dir / (name + '.json')} is missing: "
                f"did tutorials/{tutorial} run and reach save_results()?"
            )
        else:
            text = NOT_EXECUTED
        results_dir.mkdir(parents=True, exist_ok=True)
        path = results_dir / file_name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        texts.append(text)
    return texts[0]


def _executed(app: Any) -> bool:
    value = app.config.sphinx_gallery_conf.get("plot_gallery", True)
    return str(value).lower() not in ("false", "0", "no")


def _before_gallery(app: Any) -> None:
    if _executed(app):
        forget_results(Path(os.environ[RESULTS_DIR_VARIABLE]))


def _after_gallery(app: Any) -> None:
    write_headline(Path(os.environ[RESULTS_DIR_VARIABLE]), _executed(app))


def setup(app: Any) -> dict[str, Any]:
    # sphinx-gallery executes the tutorials in its builder-inited handler
    # (priority 500); these run just before and after it.
    app.connect("builder-inited", _before_gallery, priority=450)
    app.connect("builder-inited", _after_gallery, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
