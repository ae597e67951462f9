"""Sphinx configuration of the reann_nequip documentation (``make docs``)."""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# the package of this checkout, whatever is installed
sys.path.insert(0, str(ROOT))

from reann_nequip import __version__  # noqa: E402

project = "reann_nequip"
author = "the reann_nequip developers"
copyright = "2026, the reann_nequip developers"
release = __version__
version = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]

# Markdown: $…$ and $$…$$ maths, ::: fences, anchors on headings for cross-page links
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# API reference: Google-style docstrings; signatures without type hints (the docstrings' Args
# give types with their meaning), members in source order
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_typehints = "none"
autodoc_member_order = "bysource"
# forward() of the graph modules would otherwise show torch.nn.Module.forward's docstring
autodoc_inherit_docstrings = False
autodoc_default_options = {"members": True, "show-inheritance": False}

# `-n` (nitpicky) checks every cross-reference; the types of torch, nequip, Lightning, ASE and
# numpy are documented on their own sites, which the build does not fetch
nitpick_ignore_regex = [
    ("py:.*", r"(torch|torchmetrics|nequip|lightning|ase|numpy|np|omegaconf|typing)(\..*)?"),
]

html_theme = "furo"
html_title = f"reann_nequip {release}"
