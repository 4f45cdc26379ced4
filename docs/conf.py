"""Sphinx configuration: python -m sphinx -W --keep-going -b html docs docs/_build/html

The Python API page is generated from the installed membuf's docstrings
(autodoc), so install membuf first (pip install .)."""

import membuf

project = "membuf"
author = "membuf developers"
copyright = "2026, membuf developers"
release = membuf.__version__
version = ".".join(release.split(".")[:2])

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]

myst_heading_anchors = 3  # [text](page.md#a-heading) links, as GitHub renders them
myst_enable_extensions = ["colon_fence"]

# Every c: and py: cross-reference must resolve (sphinx-build -W turns a miss
# into an error).  The names below are CPython's, not ours: Sphinx has no
# inventory for them offline.
nitpicky = True
nitpick_ignore = [
    ("c:identifier", name)
    for name in ("PyObject", "PyTypeObject", "Py_ssize_t", "size_t", "PY_SSIZE_T_MAX")
] + [("py:class", name) for name in ("object", "int", "bytes", "optional")]

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": True, "special-members": "__dlpack__, __dlpack_device__, __enter__, __exit__"}

html_theme = "alabaster"
html_title = f"membuf {release}"
