"""A real browser looks at the built docs: the BERT page shows its table and its figures.

Headless Chromium (Debian's ``chromium`` package) opens the built pages from
disk (``file://``). Needs the built site (``tox -e docs`` builds it, then runs
this file): without it, or without Chromium, the tests skip, unless
``BATCH_INFERENCE_REQUIRE_DOCS=1`` (CI sets it after the build), which turns
a skip into a failure. Screenshots are kept in ``docs/_build/screenshots/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("BATCH_INFERENCE_DOCS_HTML", ROOT / "docs" / "_build" / "html"))
SCREENSHOTS = HTML.parent / "screenshots"
BERT_PAGE = HTML / "auto_tutorials" / "plot_bert_embedding.html"
REQUIRE = os.environ.get("BATCH_INFERENCE_REQUIRE_DOCS", "") == "1"

sys.path.insert(0, str(ROOT / "docs" / "_ext"))
from bi_checks import BERT_ROWS, bert_table_problems, parse_page  # noqa: E402

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]


def _skip_or_fail(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"{reason} (BATCH_INFERENCE_REQUIRE_DOCS=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in (os.environ.get("BATCH_INFERENCE_CHROMIUM", ""), "chromium", "chromium-browser",
                 "google-chrome"):
        path = shutil.which(name) if name else None
        if path:
            break
    else:
        _skip_or_fail("no Chromium found (Debian: apt-get install chromium)")
    if not BERT_PAGE.exists():
        _skip_or_fail(f"the docs are not built: {BERT_PAGE} is missing (run tox -e docs)")
    return path


def _run(chromium: str, tmp_path: Path, *args: str) -> str:
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    done = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=90, check=False,
    )
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


def _png_pixels_vary(path: Path) -> tuple[int, int, bool]:
    """Width, height, and whether the decoded image is not one flat colour."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    idat, offset = b"", 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind == b"IDAT":
            idat += data[offset + 8:offset + 8 + length]
        offset += 12 + length
    raw = zlib.decompress(idat)
    return width, height, len(set(raw[1::7])) > 8


@pytest.mark.timeout(180)
def test_bert_page_shows_every_row_of_the_table(chromium: str, tmp_path: Path) -> None:
    dom = _run(chromium, tmp_path, "--virtual-time-budget=5000", "--dump-dom",
               BERT_PAGE.as_uri())
    page = parse_page(dom)
    assert bert_table_problems(page) == []
    text = page.text
    for method, _ in BERT_ROWS:
        assert method in text
    assert re.search(r"Total running time of the script:\s*\(\d+ minutes [\d.]+ seconds\)", text)
    assert "weights" in text  # the environment block says which weights ran


@pytest.mark.timeout(180)
def test_bert_figures_are_decoded_by_the_browser(chromium: str, tmp_path: Path) -> None:
    # A probe page loads the BERT page in a frame and reports what the browser made of its
    # images: naturalWidth > 0 means the file was found and decoded.
    probe = tmp_path / "probe.html"
    probe.write_text(
        "<!doctype html><html><body><pre id='result'>pending</pre>"
        f"<iframe id='f' src='{BERT_PAGE.as_uri()}' width='1280' height='20000'></iframe>"
        "<script>const f = document.getElementById('f');"
        "f.addEventListener('load', () => { let out; try { const d = f.contentDocument;"
        " out = {images: [...d.images].map(i => ({src: i.getAttribute('src'),"
        " width: i.naturalWidth, height: i.naturalHeight})),"
        " tables: d.querySelectorAll('table.dataframe').length};"
        " } catch (e) { out = {error: String(e)}; }"
        " document.getElementById('result').textContent = JSON.stringify(out); });"
        "</script></body></html>",
        encoding="utf-8",
    )
    dom = _run(chromium, tmp_path, "--allow-file-access-from-files",
               "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    match = re.search(r"<pre id=\"result\">([^<]*)</pre>", dom)
    assert match, dom[-2000:]
    report = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert "error" not in report, report
    figures = [i for i in report["images"] if "sphx_glr_plot_bert_embedding_" in i["src"]
               and "thumb" not in i["src"]]
    assert len(figures) >= 2, report  # the histogram of lengths and the throughput bars
    for figure in figures:
        assert figure["width"] > 100 and figure["height"] > 100, figure
    assert report["tables"] >= 1


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name, page, height", [
    ("plot_bert_embedding", BERT_PAGE, 9000),  # the whole page: table and figures
    ("index", HTML / "index.html", 1800),
])
def test_screenshot_kept_as_artifact(chromium: str, tmp_path: Path, name: str, page: Path,
                                     height: int) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / f"{name}.png"
    target.unlink(missing_ok=True)
    _run(chromium, tmp_path, f"--window-size=1280,{height}", "--virtual-time-budget=5000",
         f"--screenshot={target}", page.as_uri())
    assert _png_pixels_vary(target) == (1280, height, True), f"{target}: nothing rendered?"
