"""Sphinx configuration of the batch_inference site.

Build it with ``tox -e docs`` (or ``sphinx-build -W --keep-going -b html docs
docs/_build/html`` in an environment with the ``docs`` extra). Nothing here
needs the internet: no intersphinx, no remote images or fonts.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(ROOT))

# The tutorials save their measured results here (batch_inference.benchmark.results);
# bi_headline turns the BERT tutorial's into the home page's headline.
os.environ["BATCH_INFERENCE_RESULTS_DIR"] = str(DOCS / "_generated")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import batch_inference  # noqa: E402

project = "batch_inference"
author = "batch_inference developers"
copyright = "batch_inference developers"
release = batch_inference.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
    "bi_api",  # docs/_ext: one API page per public module
    "bi_headline",  # docs/_ext: the home page's measured headline
    "bi_checks",  # docs/_ext: fail the build when a tutorial did not run
    "bi_gallery",  # docs/_ext: the gallery's tutorials apart from its benchmark reports
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]
suppress_warnings = ["config.cache"]  # sphinx_gallery_conf holds callables

# -- autodoc + napoleon (NumPy docstrings) ---------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"exclude-members": "__init__, __new__"}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = False
napoleon_use_rtype = False

# -- MyST ------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# -- sphinx-gallery --------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "../tutorials",
    "gallery_dirs": "auto_tutorials",
    # Every tutorials/plot_*.py is executed, whoever adds it.
    "filename_pattern": re.escape(os.sep) + "plot_",
    "ignore_pattern": r"__init__\.py",
    "within_subsection_order": "bi_gallery.TutorialOrder",
    "image_scrapers": ("matplotlib",),
    # A DataFrame as a cell's last expression renders as an HTML table.
    "capture_repr": ("_repr_html_", "__repr__"),
    "reset_modules": ("matplotlib", "bi_gallery.reset_torch"),
    "reset_modules_order": "before",
    # Report every page's running time: bi_checks fails a page that shows none.
    "min_reported_time": 0,
    # Benchmarks re-run on every build (their numbers depend on the library and the
    # machine, not only on the script's text).
    "run_stale_examples": True,
    # Defaults kept on purpose: a tutorial that raises fails the build.
    "abort_on_example_error": False,
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    "remove_config_comments": True,
    "show_memory": False,
    "backreferences_dir": None,
    # Its summary page loads jQuery/DataTables from CDNs; the site must work offline. Each
    # page reports its own running time, and bi_checks logs them all at the end of the build.
    "write_computation_times": False,
}

# -- HTML ------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"batch_inference {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {"navigation_with_keys": True}
html_show_sourcelink = False
