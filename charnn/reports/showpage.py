"""`charnn show --html`: the report as one self-contained page (the template `show.html`, a package resource,
with the report's numbers inlined as JSON; no network): the text coloured by surprisal or by a unit's
activation, the model's top guesses on hover, the gradient's reach and attention matrices."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from charnn.data.files import write_output
from charnn.reports.show import ShowReport, report_dict


def page(report: ShowReport) -> str:
    """The page's HTML."""
    template = resources.files("charnn.reports").joinpath("show.html").read_text(encoding="utf-8")
    # inside <script>, "</" could end the element early, and "<!--" then "<script" in the data (a label, a learned
    # piece) put the parser in a state where the page's own "</script>" did not end it: a blank page. Every "<",
    # ">" and "&" as a JSON escape: the same strings to JSON, no markup to HTML
    data = json.dumps(report_dict(report), ensure_ascii=False)
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return template.replace("/*DATA*/", data, 1)


def write_page(report: ShowReport, path: Path) -> None:
    """The page at `path`, whole or not at all (a full disk cut an older page off mid-data)."""
    write_output(Path(path), page(report).encode("utf-8"), "the page")
