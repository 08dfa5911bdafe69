"""Input lines for line-by-line commands (`charnn transduce`): files, or stdin, read on a thread and handed
over in chunks of whatever has arrived.

A chunk is every line that is ready, up to `most`: from a file or a fast pipe that is a large chunk (decoded
in length-sorted batches); from a slow producer (a person typing, a process writing a line at a time) it is
the one line there is, so its result can be written before the next line comes. A line keeps its place
(`file:line`) for error messages.
"""

from __future__ import annotations

import io
import queue
import sys
import threading
from typing import Iterator, List, Sequence, Tuple

from charnn.errors import CharnnError, missing

GATHER_SECS = 0.005  # after the first line of a chunk, wait this long for each next one while lines keep coming
_DONE = object()

Line = Tuple[str, str]  # (text without its line end, where: "file:line")
STDIN = "-"  # as a file argument: standard input


def stdin_lines(encoding: str) -> Iterator[str]:
    """Standard input's lines in `encoding` (the terminal's own encoding is not asked), ends kept, a byte-order
    mark dropped, each handed over as soon as a pipe has it. Bytes that are not `encoding` are one error naming
    the line: a line at a time where the encoding keeps b"\n" a byte of its own (a decoder reading ahead named
    the first line of its chunk), else (UTF-16/32) through a TextIOWrapper."""
    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:  # (a test's StringIO)
        yield from sys.stdin
        return
    if "\n".encode(encoding) != b"\n":
        yield from io.TextIOWrapper(raw, encoding=encoding, errors="strict", newline="\n")
        return
    for no, line in enumerate(raw, 1):
        try:
            text = line.decode(encoding)
        except UnicodeDecodeError as e:
            raise CharnnError(f"stdin:{no}: not valid {encoding} text (byte {e.start + 1} of the line; see "
                              "--encoding)") from None
        yield text[1:] if no == 1 and text.startswith("\ufeff") else text


class LineFeed:
    def __init__(self, paths: Sequence[str], encoding: str = "utf-8", most: int = 4096, stdin=None):
        self.paths, self.encoding, self.most = list(paths), encoding, most
        self.stdin = stdin
        self.queue: "queue.Queue" = queue.Queue(maxsize=4 * most)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for path in self.paths or [STDIN]:
                if path == STDIN:
                    self._lines(self.stdin if self.stdin is not None else stdin_lines(self.encoding), "stdin")
                    continue
                try:
                    with open(path, encoding=self.encoding, newline="\n") as f:
                        self._lines(f, path)
                except FileNotFoundError:
                    raise CharnnError(f"input file {path!r} {missing(path)}") from None
                except IsADirectoryError:
                    raise CharnnError(f"{path!r} is a folder; pass files of input lines") from None
                except OSError as e:
                    raise CharnnError(f"cannot read {path!r}: {e.strerror or e}") from None
            self.queue.put(_DONE)
        except BaseException as e:  # handed to the reader of the feed, which raises it there
            self.queue.put(e)

    def _lines(self, stream, name: str) -> None:
        no = 0
        try:
            for raw in stream:
                no += 1
                raw = raw[1:] if no == 1 and raw.startswith("\ufeff") else raw  # (a BOM is not an input character)
                self.queue.put((raw.rstrip("\n").rstrip("\r"), f"{name}:{no}"))
        except UnicodeError:  # (a decode error, or UTF-16 without a BOM: a plain UnicodeError)
            raise CharnnError(f"{name}:{no + 1}: not valid {self.encoding} text (see --encoding)") from None

    def chunks(self) -> Iterator[List[Line]]:
        """Lists of lines in input order: each holds at least one line, then whatever follows without a pause."""
        while True:
            first = self.queue.get()
            if first is _DONE:
                return
            if isinstance(first, BaseException):
                raise first
            chunk, end = [first], None
            while len(chunk) < self.most:
                try:
                    item = self.queue.get(timeout=GATHER_SECS)
                except queue.Empty:
                    break
                if item is _DONE or isinstance(item, BaseException):
                    end = item
                    break
                chunk.append(item)
            yield chunk
            if end is _DONE:
                return
            if end is not None:
                raise end
