"""Tests of the docs' own machinery (docs/_ext) and of the code shown on the docs' pages."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

from bi_checks import (  # noqa: E402
    BERT_COLUMNS,
    BERT_ROWS,
    bert_table_problems,
    figure_problems,
    parse_page,
    running_time_s,
    site_problems,
    tutorial_names,
)

GOOD_ROWS = [("Baseline", "/", "1.00"), ("Sequence Batcher", "4", "4.00"),
             ("Sequence Batcher", "8", "7.90"), ("Sequence Batcher", "32", "30.1"),
             ("Bucket Sequence Batcher", "32", "15.2")]


def _bert_html(rows=GOOD_ROWS, seconds: str = "12.345", figures: int = 2) -> str:
    """A page shaped like sphinx-gallery's output with a pandas table."""
    header = "".join(f"<th>{c}</th>" for c in BERT_COLUMNS)
    body = "".join(
        f"<tr><th>{i}</th><td>{m}</td><td>800</td><td>3.21s</td><td>{s}</td><td>{a}</td>"
        f"<td>249.2</td><td>1.5</td></tr>"
        for i, (m, s, a) in enumerate(rows)
    )
    images = "".join(
        f'<img src="../_images/sphx_glr_plot_bert_embedding_{i:03d}.png">'
        for i in range(1, figures + 1)
    )
    return (
        "<html><body><script>var x = '<table>';</script>"
        '<table class="dataframe"><thead><tr style="text-align: right;"><th></th>'
        f"{header}</tr></thead><tbody>{body}</tbody></table>{images}"
        f"<p><strong>Total running time of the script:</strong> (0 minutes {seconds} seconds)</p>"
        "</body></html>"
    )


def test_complete_bert_page_has_no_problems() -> None:
    page = parse_page(_bert_html())
    assert bert_table_problems(page) == []
    assert running_time_s(page) == pytest.approx(12.345)


@pytest.mark.parametrize("missing", range(len(BERT_ROWS)))
def test_each_missing_bert_row_is_reported(missing: int) -> None:
    rows = [r for i, r in enumerate(GOOD_ROWS) if i != missing]
    problems = bert_table_problems(parse_page(_bert_html(rows)))
    method, size = BERT_ROWS[missing]
    assert problems == [f"the BERT table lacks the row {method!r} with max batch {size}"]


def test_non_positive_measurement_is_reported() -> None:
    rows = list(GOOD_ROWS)
    rows[4] = ("Bucket Sequence Batcher", "32", "nan")
    problems = bert_table_problems(parse_page(_bert_html(rows)))
    assert len(problems) == 1 and "Avg Batch Size" in problems[0]


def test_page_without_the_table_is_reported() -> None:
    problems = bert_table_problems(parse_page("<html><body><p>no table</p></body></html>"))
    assert problems and "no table" in problems[0]


def test_running_time_minutes_and_absence() -> None:
    page = parse_page("<p>Total running time of the script: ( 2 minutes 3.5 seconds)</p>")
    assert running_time_s(page) == 123.5
    assert running_time_s(parse_page("<p>nothing ran</p>")) is None


def _site(tmp_path: Path, pages: dict[str, str]) -> Path:
    gallery = tmp_path / "html" / "auto_tutorials"
    (tmp_path / "html" / "_images").mkdir(parents=True)
    gallery.mkdir()
    for name, html in pages.items():
        (gallery / f"{name}.html").write_text(html)
    for i in (1, 2):
        (tmp_path / "html" / "_images" / f"sphx_glr_plot_bert_embedding_{i:03d}.png").write_bytes(
            b"png")
    return tmp_path / "html"


def test_site_problems_flags_unexecuted_and_missing_pages(tmp_path: Path) -> None:
    html = _site(tmp_path, {
        "plot_bert_embedding": _bert_html(),
        "plot_quickstart": "<p>Total running time of the script: (0 minutes 0.000 seconds)</p>",
        "plot_asyncio": "<p>code only, no timing</p>",
    })
    problems = site_problems(html, ["plot_asyncio", "plot_bert_embedding", "plot_custom",
                                    "plot_quickstart"])
    assert problems == [
        "plot_asyncio: the page reports no running time (not executed?)",
        f"plot_custom: no page at {html / 'auto_tutorials' / 'plot_custom.html'}",
        "plot_quickstart: the page reports 0.0 seconds (not executed)",
    ]


def test_site_problems_accepts_a_good_site(tmp_path: Path) -> None:
    html = _site(tmp_path, {"plot_bert_embedding": _bert_html()})
    assert site_problems(html, ["plot_bert_embedding"]) == []


def test_missing_figures_are_reported(tmp_path: Path) -> None:
    html = _site(tmp_path, {"plot_bert_embedding": _bert_html(figures=1)})
    page_path = html / "auto_tutorials" / "plot_bert_embedding.html"
    problems = figure_problems(parse_page(page_path.read_text()), page_path,
                               "plot_bert_embedding")
    assert problems == ["plot_bert_embedding: 1 figure(s) on the page, expected 2+"]
    (html / "_images" / "sphx_glr_plot_bert_embedding_001.png").unlink()
    problems = figure_problems(parse_page(page_path.read_text()), page_path,
                               "plot_bert_embedding", least=1)
    assert problems == ["plot_bert_embedding: the figure "
                        "../_images/sphx_glr_plot_bert_embedding_001.png is missing on disk"]


def test_every_tutorial_is_checked() -> None:
    names = tutorial_names(ROOT / "tutorials")
    assert "plot_bert_embedding" in names
    assert names == sorted(p.stem for p in (ROOT / "tutorials").glob("plot_*.py"))


# ---------------------------------------------------------------- the home page's headline
def _payload() -> dict:
    rows = [
        {"Method": m, "Query Count": 800, "Execution Time": t, "Max Batch Size Setting": s,
         "Avg Batch Size": a, "Queries/s": q, "Speed-up": round(q / 100.0, 2)}
        for m, s, a, t, q in [("Baseline", "/", 1.0, 8.0, 100.0),
                              ("Sequence Batcher", 4, 4.0, 6.0, 133.3),
                              ("Sequence Batcher", 8, 8.0, 5.0, 160.0),
                              ("Sequence Batcher", 32, 31.2, 4.0, 200.0),
                              ("Bucket Sequence Batcher", 32, 15.0, 3.0, 266.7)]
    ]
    env = {"device": "cpu (x86_64, 2 cores)", "torch": "2.13.0", "torch threads": "2",
           "clients": "64"}
    return {"environment": env, "mode": "quick", "weights": "MiniLM (pretrained)",
            "lengths": [4, 100], "rounds": 3, "rows": rows}


def _overhead_payload() -> dict:
    return {"environment": {"device": "cpu (x86_64, 2 cores)"},
            "thread_requests_per_s": {"1": 9000.0, "64": 30000.0},
            "thread_floor_requests_per_s": {"1": 10000.0, "64": 40000.0},
            "async_requests_per_s": {"1000": 120000.0},
            "lone_caller_added_ms": 0.05, "lone_caller_direct_ms": 0.002,
            "lone_caller_hosted_ms": 0.052}


def _save_both(tmp_path: Path) -> None:
    import bi_headline

    from batch_inference.benchmark.results import RESULTS_DIR_VARIABLE, save_results

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(RESULTS_DIR_VARIABLE, str(tmp_path))
        save_results(bi_headline.RESULTS_NAME, _payload())
        save_results(bi_headline.OVERHEAD_NAME, _overhead_payload())


def test_headline_quotes_the_saved_numbers(tmp_path: Path) -> None:
    pytest.importorskip("sphinx")
    import bi_headline

    _save_both(tmp_path)
    text = bi_headline.write_headline(tmp_path, executed=True)
    assert (tmp_path / bi_headline.HEADLINE_FILE).read_text() == text
    assert "**266.7 queries/s, 2.67x**" in text
    assert "(100.0 queries/s)" in text and "reached 2.00x" in text
    assert "MiniLM (pretrained)" in text and "quick mode" in text
    assert "median of 3 interleaved runs" in text
    assert len(re.findall(r"^\| (Baseline|Sequence Batcher|Bucket Sequence Batcher) \|", text,
                          flags=re.M)) == 5


def test_overhead_quote_is_the_saved_lone_caller_and_top_thread_count(tmp_path: Path) -> None:
    pytest.importorskip("sphinx")
    import bi_headline

    _save_both(tmp_path)
    bi_headline.write_headline(tmp_path, executed=True)
    text = (tmp_path / bi_headline.OVERHEAD_FILE).read_text()
    assert "52.0 µs through the host and 2.0 µs calling" in text
    assert "the host added **50.0 µs**" in text
    assert "64 client threads got 30,000 requests/s" in text and "75% of a bare" in text
    assert "cpu (x86_64, 2 cores)" in text and bi_headline.OVERHEAD_DOC in text


def test_overhead_results_are_required_after_execution(tmp_path: Path) -> None:
    pytest.importorskip("sphinx")
    import bi_headline
    from sphinx.errors import ExtensionError

    _save_both(tmp_path)
    (tmp_path / f"{bi_headline.OVERHEAD_NAME}.json").unlink()
    with pytest.raises(ExtensionError, match=r"overhead.json is missing.*plot_overhead.py"):
        bi_headline.write_headline(tmp_path, executed=True)
    bi_headline.write_headline(tmp_path, executed=False)
    assert (tmp_path / bi_headline.OVERHEAD_FILE).read_text() == bi_headline.NOT_EXECUTED


def test_headline_refuses_missing_results_after_execution(tmp_path: Path) -> None:
    pytest.importorskip("sphinx")
    import bi_headline
    from sphinx.errors import ExtensionError

    with pytest.raises(ExtensionError, match="bert_embedding.json is missing"):
        bi_headline.write_headline(tmp_path, executed=True)
    assert bi_headline.write_headline(tmp_path, executed=False) == bi_headline.NOT_EXECUTED


def test_headline_without_execution_quotes_the_last_run(tmp_path: Path) -> None:
    pytest.importorskip("sphinx")
    import bi_headline

    from batch_inference.benchmark.results import RESULTS_DIR_VARIABLE, save_results

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(RESULTS_DIR_VARIABLE, str(tmp_path))
        save_results(bi_headline.RESULTS_NAME, _payload())
    assert "266.7 queries/s" in bi_headline.write_headline(tmp_path, executed=False)


def test_stale_results_are_forgotten_before_the_gallery_runs(tmp_path: Path) -> None:
    pytest.importorskip("sphinx")
    import bi_headline

    stale = [tmp_path / f"{name}.json"
             for name in (bi_headline.RESULTS_NAME, bi_headline.OVERHEAD_NAME)]
    for path in stale:
        path.write_text("{}")
    bi_headline.forget_results(tmp_path)
    assert not any(path.exists() for path in stale)


# ---------------------------------------------------------------- the code on the pages runs
def _page_snippets() -> list[tuple[str, str]]:
    """Every ```python fence of the Markdown pages (``{code-block}`` fragments are not run)."""
    snippets = []
    for page in sorted(DOCS.rglob("*.md")):
        if "_build" in page.parts or "_generated" in page.parts:
            continue
        for i, code in enumerate(re.findall(r"^```python\n(.*?)^```", page.read_text(),
                                            flags=re.M | re.S)):
            snippets.append((f"{page.relative_to(DOCS)}#{i}", code))
    return snippets


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where, code", _page_snippets(), ids=[w for w, _ in _page_snippets()])
def test_page_snippet_runs(where: str, code: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(code, where, "exec"), {"__name__": "__snippet__"})
    printed = capsys.readouterr().out
    # A "# value" comment after print(...) on the page is what it prints.
    for expected in re.findall(r"^print\(.*\)\s+# (.+?)(?::.*)?$", code, flags=re.M):
        assert expected.strip() in printed, (expected, printed)


def test_pages_have_snippets_to_run() -> None:
    pages = {where.split("#")[0] for where, _ in _page_snippets()}
    assert {"index.md", "getting_started.md", "model_host.md", "batcher/concat_batcher.md",
            "batcher/seq_batcher.md", "batcher/bucket_seq_batcher.md",
            "batcher/length_aware_batcher.md",
            "batcher/what_is_batcher.md", "generation.md", "serving.md", "remote.md"} <= pages


def test_remote_resources_are_reported(tmp_path: Path) -> None:
    from bi_checks import remote_resource_problems

    (tmp_path / "sub").mkdir()
    (tmp_path / "ok.html").write_text(
        '<a href="https://example.org">a link is fine</a><img src="_images/a.png">'
        '<link rel="stylesheet" href="_static/furo.css">'
    )
    (tmp_path / "sub" / "bad.html").write_text(
        '<script src="https://cdn.example/x.js"></script>'
        "<link href='http://cdn.example/y.css' rel='stylesheet'>"
        '<img alt="x" src="https://example.org/z.png">'
    )
    problems = remote_resource_problems(tmp_path)
    assert len(problems) == 3
    assert all(p.startswith("sub/bad.html loads a remote resource: ") for p in problems)


def test_every_generated_include_is_written_by_the_build() -> None:
    pytest.importorskip("sphinx")
    import bi_headline

    written = {file_name for _, file_name, _, _ in bi_headline.GENERATED}
    included = {
        match
        for page in DOCS.rglob("*.md")
        if "_build" not in page.parts and "_generated" not in page.parts
        for match in re.findall(r"^```\{include\} _generated/(\S+)$", page.read_text(),
                                flags=re.M)
    }
    assert included == written  # {"headline.md", "overhead.md"}: each quoted, each written


# ---------------------------------------------------------------- no hand-typed speed claims
#: A timing or rate typed into prose (``12 ms``, ``3.5x``, ``40%``, ``900 requests/s``), or a
#: sweeping speed claim. Measured figures reach the pages through docs/_generated instead.
SPEED_CLAIM = re.compile(
    r"\b\d[\d,.]*\s*(?:ms|µs|us|seconds?|s|x|%|queries/s|requests/s)(?![\w-])"
    r"|\bfar (?:less|more|fewer|faster|slower)\b|\bwell under\b|\btimes (?:faster|the time)\b"
    r"|\bmuch (?:faster|slower)\b",
    flags=re.I,
)


def _prose(text: str) -> str:
    """Markdown without its code fences and inline code (code may hold any number)."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))


def test_speed_claim_pattern_catches_typed_figures() -> None:
    for claim in ("well under a millisecond", "in 12 ms", "3.5x the throughput", "at 40%",
                  "900 requests/s", "in far less time", "32 times the time of one"):
        assert SPEED_CLAIM.search(_prose(claim)), claim
    for fine in ("`max_delay_s=0.5`", "buckets `[16, 32, 64]`", "Python 3.11", "a batch of 32",
                 "```python\nx = 5  # 5 ms\n```\n"):
        assert not SPEED_CLAIM.search(_prose(fine)), fine


def test_pages_type_no_speed_figures_by_hand() -> None:
    pages = [p for p in DOCS.rglob("*.md") if "_build" not in p.parts
             and "_generated" not in p.parts] + [ROOT / "README.md"]
    claims = [f"{page.relative_to(ROOT)}: {match.group(0)!r}"
              for page in pages for match in SPEED_CLAIM.finditer(_prose(page.read_text()))]
    assert claims == []
