"""The README's screenshots of `charnn show`, made from the run the README's quick command trains
(`charnn train --max-time 2m`, the built-in corpus) on a text it did not train on (charnn's own
charnn/inspect/properties.py): the terminal views (`charnn show`, `--cells`, `--gradients`) as the terminal
prints them (ANSI, turned into an SVG by Rich, photographed by headless Chromium) and the --html page with a
character hovered.

    python docs/images/make_show_images.py checkpoints/stdlib
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.text import Text

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tests"))


def terminal(run: str, text: Path, extra: list, name: str, width: int = 104) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": str(width)}
    ansi = subprocess.run([sys.executable, "-m", "charnn", "show", run, str(text), "--format", "color", *extra],
                          env=env, capture_output=True, text=True, check=True).stdout
    console = Console(record=True, width=width, force_terminal=True, color_system="truecolor",
                      file=open(os.devnull, "w"))
    console.print(Text.from_ansi(ansi))
    with tempfile.TemporaryDirectory() as tmp:
        svg = Path(tmp) / "view.svg"
        svg.write_text(console.export_svg(title=f"charnn show {' '.join(extra)}".strip()), encoding="utf-8")
        height = int(float(svg.read_text().split('viewBox="0 0 ')[1].split('"')[0].split()[1]))
        subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={tmp}/profile", f"--screenshot={OUT / name}",
                        f"--window-size={int(width * 12.3) + 40},{height}", svg.as_uri()],
                       check=True, capture_output=True)


def page(run: str, text: Path, name: str) -> None:
    from test_serve_browser import DevTools

    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "show.html"
        subprocess.run([sys.executable, "-m", "charnn", "show", run, str(text), "--cells", "--gradients", "--html",
                        str(html)], env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True, capture_output=True)
        keep = [os.open(os.devnull, os.O_RDONLY) for _ in range(4)]  # fds 3 and 4 stay free for the pipe
        browser = DevTools(Path(tmp) / "profile")
        try:
            target = browser.call("Target.createTarget", url=html.as_uri())["targetId"]
            browser.session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            browser.wait_for("document.readyState === 'complete' && document.querySelectorAll('#text span').length",
                             "the page")
            x, y = browser.js("(() => { const s = [...document.querySelectorAll('#text span')].filter(s => "
                              "s.textContent === '(')[2].getBoundingClientRect(); return [s.x + 4, s.y + 8]; })()")
            browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
            time.sleep(0.3)
            shot = browser.call("Page.captureScreenshot", format="png")["data"]
            (OUT / name).write_bytes(base64.b64decode(shot))
        finally:
            browser.close()
            for fd in keep:
                os.close(fd)


def shrink(path: Path) -> None:
    """A screenshot in a palette of 96 colours (text and a few shades need no more): a third of the bytes."""
    try:
        from PIL import Image
    except ImportError:
        return
    Image.open(path).convert("RGB").quantize(colors=96, dither=Image.Dither.NONE).save(path, optimize=True)


def main() -> None:
    run = sys.argv[1] if len(sys.argv) > 1 else "checkpoints/stdlib"
    text = ROOT / "charnn" / "inspect" / "properties.py"
    with tempfile.TemporaryDirectory() as tmp:
        short = Path(tmp) / "excerpt.py"
        short.write_text("".join(text.read_text(encoding="utf-8").splitlines(True)[20:46]), encoding="utf-8")
        terminal(run, short, [], "show-surprisal.png")
        terminal(run, text, ["--cells", "--units", "2"], "show-cells.png")
        terminal(run, text, ["--gradients"], "show-gradients.png", width=90)
    page(run, text, "show-page.png")
    for name in ("show-surprisal.png", "show-cells.png", "show-gradients.png", "show-page.png"):
        shrink(OUT / name)


if __name__ == "__main__":
    main()
