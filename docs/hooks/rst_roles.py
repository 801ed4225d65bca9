"""MkDocs hook: the docstrings cross-reference in Sphinx's role syntax (:func:`name`); the API pages show the
name as code, without the role prefix."""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const|ref|term):(?=<code>)")


def on_page_content(html: str, **_: object) -> str:
    return ROLE.sub("", html)
