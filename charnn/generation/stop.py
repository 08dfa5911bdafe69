"""Stop strings: a row's text ends right before the first occurrence of any of them (OpenAI's way)."""

from __future__ import annotations

from typing import Sequence


class StopCut:
    """Cuts a text stream right before the first occurrence of any stop string; holds back just enough text
    (the longest stop minus one character) that a stop split across pieces is never partly handed out."""

    def __init__(self, stops: Sequence[str]):
        self.stops, self.held, self.done = [s for s in stops if s], "", False
        self.after = 0  # once done: characters of the last piece after the stop (drawn, never handed out)
        self.keep = max((len(s) for s in self.stops), default=1) - 1

    def feed(self, piece: str) -> str:
        if self.done:
            return ""
        text = self.held + piece
        hits = [(at, -len(s)) for s, at in ((s, text.find(s)) for s in self.stops) if at >= 0]
        if hits:
            at, minus_len = min(hits)  # the first stop (the longest of those starting there)
            self.done, self.held, self.after = True, "", len(text) - at + minus_len
            return text[:at]
        cut = max(0, len(text) - self.keep)
        self.held = text[cut:]
        return text[:cut]

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out
