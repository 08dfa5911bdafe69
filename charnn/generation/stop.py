"""Stop strings: a row's text ends right before the first of them to be completed (OpenAI's way, as a stream
read one character at a time sees them), whatever pieces the text arrives in."""

from __future__ import annotations

from typing import Sequence


class StopCut:
    """Cuts a text stream right before the first stop string to be completed (of those completed at one character,
    the longest); holds back just enough text (the longest stop minus one character) that a stop split across
    pieces is never partly handed out. The cut does not depend on how the text is split into pieces: with stops
    "e " and "ee w", "thee w" ends "th" + "e" in one piece and in six (it took "ee w", which starts first but
    ends later, when the piece held both: a served row's text depended on the rows beside it)."""

    def __init__(self, stops: Sequence[str]):
        self.stops, self.held, self.done = [s for s in stops if s], "", False
        self.after = 0  # once done: characters of the last piece after the stop (drawn, never handed out)
        self.keep = max((len(s) for s in self.stops), default=1) - 1

    def feed(self, piece: str) -> str:
        if self.done:
            return ""
        text = self.held + piece
        hits = [(at + len(s), at) for s, at in ((s, text.find(s)) for s in self.stops) if at >= 0]
        if hits:  # (no stop ends inside what was held: it was looked at with the piece before)
            end, at = min(hits)  # the first to end (the longest of those ending there)
            self.done, self.held, self.after = True, "", len(text) - end
            return text[:at]
        cut = max(0, len(text) - self.keep)
        self.held = text[cut:]
        return text[:cut]

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out
