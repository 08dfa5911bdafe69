"""The playground page in a real headless browser (Debian's `chromium`), driven over the DevTools protocol on a
pipe (no extra packages): type a prompt, click Generate, see the text arrive; a screenshot is kept.

The screenshot goes to $CHARNN_TEST_ARTIFACTS/playground.png when that is set, else to the test's temporary
folder (pytest keeps the last few runs' folders)."""

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless browser installed (Debian: apt-get install "
                                                        "chromium); the page's HTTP side is tested in test_serve.py")
pytest.importorskip("uvicorn", reason="charnn serve needs the serve extra: pip install -e '.[serve]'")

from test_serve import Served  # noqa: E402  (after the skips: it needs the openai client)


class DevTools:
    """Chromium with --remote-debugging-pipe: JSON messages separated by NUL on fds 3 (in) and 4 (out)."""

    def __init__(self, profile: Path):
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()

        def fds():  # in the child, before exec: the pipe ends where chromium looks for them
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self.proc = subprocess.Popen([BROWSER, "--headless=new", "--no-sandbox", "--disable-gpu",
                                      "--disable-dev-shm-usage", "--no-first-run", "--remote-debugging-pipe",
                                      f"--user-data-dir={profile}", "--window-size=1000,800", "about:blank"],
                                     preexec_fn=fds, close_fds=False, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self.buffer, self.next_id, self.session = b"", 0, None

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self.to_child, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                chunk = os.read(self.from_child, 1 << 16)
                if not chunk:
                    raise AssertionError("chromium closed the DevTools pipe")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open(self, url: str) -> None:
        """A new tab on `url`, which the calls after this one talk to."""
        target = self.call("Target.createTarget", url=url)["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 60.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"the page never showed {what}")

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        x, y = self.js(f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect(); "
                       "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self.to_child)
        os.close(self.from_child)


def test_type_a_prompt_press_generate_and_see_text_arrive(trained_run, tmp_path):
    server = Served(trained_run.run_dir, "--max-tokens-limit", "1000000")
    try:
        browser = DevTools(tmp_path / "profile")
    except BaseException:  # (no browser, or one that will not start: the server must not outlive the test)
        server.close()
        raise
    try:
        browser.open(server.url + "/")
        browser.wait_for("document.readyState === 'complete' && document.getElementById('model').options.length",
                         "the model list")
        assert browser.js("document.getElementById('model').value") == trained_run.run_dir.name
        browser.js("document.getElementById('prompt').focus()")
        browser.call("Input.insertText", text="the cat")  # typed, as a keyboard would
        browser.js("document.getElementById('length').value = '300'; document.getElementById('seed').value = '3'")
        browser.click("#go")
        status = browser.wait_for("(() => { const s = document.getElementById('status').textContent; "
                                  "return s.includes('finished') && s; })()", "the end of the generation")
        out = browser.js("document.getElementById('out').textContent")
        assert out.startswith("the cat") and len(out) == len("the cat") + 300
        assert "300 chars" in status and "chars/s" in status and "finished: length" in status
        import charnn
        assert out == "the cat" + charnn.load(trained_run.run_dir, device="cpu").generate(
            "the cat", length=300, temperature=0.8, seed=3)  # the page's settings reached the server
        shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
        folder = Path(os.environ.get("CHARNN_TEST_ARTIFACTS", tmp_path))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "playground.png").write_bytes(shot)
        assert shot.startswith(b"\x89PNG") and len(shot) > 10_000

        browser.js("document.getElementById('length').value = '1000000'")  # minutes of text, unless stopped
        browser.click("#go")
        browser.wait_for("document.getElementById('out').textContent.length > 20", "the second text arriving")
        browser.click("#stop")
        browser.wait_for("document.getElementById('status').textContent.includes('(stopped)')", "the stop")
        deadline = time.time() + 30
        while server.health()["active_rows"] and time.time() < deadline:
            time.sleep(0.05)
        assert server.health()["active_rows"] == 0  # Stop closed the stream and the server freed the row
        assert len(browser.js("document.getElementById('out').textContent")) < len("the cat") + 1000000

        # a server that fails mid-stream sends an error event: the page shows its message (was a TypeError)
        browser.js("""window.fetch = async () => new Response('data: {"choices": [{"text": "ab", "index": 0, ' +
            '"finish_reason": null}]}\\n\\ndata: {"error": {"message": "generation failed: out of memory", ' +
            '"type": "server_error", "param": null, "code": null}}\\n\\n', {status: 200})""")
        browser.click("#go")
        shown = browser.wait_for("document.querySelector('#status .error')?.textContent", "the error")
        assert "generation failed: out of memory" in shown and "TypeError" not in shown
    finally:
        browser.close()
        server.close()
