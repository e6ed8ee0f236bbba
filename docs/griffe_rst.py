"""Griffe extension for the API reference: fedsynth's docstrings use a little reStructuredText
(``:func:`name```, ``:class:`~pkg.Name```, a paragraph ending in ``::`` before an indented
block). Markdown shows those literally, so before rendering each docstring this turns a role into
a code span and ``text::`` into ``text:`` (the indented block after it already renders as code).
The source files are unchanged.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc|const):`~?([^`]+)`")
LITERAL = re.compile(r"(\S)::[ \t]*$", re.M)


class RstToMarkdown(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = ROLE.sub(r"`\1`", obj.docstring.value)
            obj.docstring.value = LITERAL.sub(r"\1:", text)
