"""`charnn show --html`'s page in a real headless browser (test_serve_browser's DevTools over a pipe): the text
is drawn coloured by surprisal, hovering a character shows the model's top guesses with the numbers the library
computed, picking a unit recolours the text, the gradient plot is drawn; a screenshot is kept
($CHARNN_TEST_ARTIFACTS/show.png when that is set, else in the test's temporary folder)."""

import base64
import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charnn.cli import app

test_serve_browser = pytest.importorskip("test_serve_browser")
DevTools = test_serve_browser.DevTools
pytestmark = test_serve_browser.pytestmark  # skipped, as there, where no headless browser is installed


def test_hover_a_character_to_see_the_models_top_guesses(trained_run, corpus_file, tmp_path):
    page = tmp_path / "show.html"
    r = CliRunner().invoke(app, ["show", str(trained_run.run_dir), str(corpus_file), "--cells", "--gradients",
                                 "--html", str(page), "--max-chars", "1500", "--top-k", "3"])
    assert r.exit_code == 0, r.stderr
    data = json.loads(page.read_text(encoding="utf-8").split('type="application/json">')[1].split("</script>")[0])
    browser = DevTools(tmp_path / "profile")
    try:
        browser.open(page.as_uri())
        browser.wait_for("document.readyState === 'complete' && document.querySelectorAll('#text span').length",
                         "the text")
        assert browser.js("document.querySelectorAll('#text span').length") == 1500
        i = 40  # a character in the first lines: hover it with the mouse
        x, y = browser.js(f"(() => {{ const r = document.querySelectorAll('#text span')[{i}].getBoundingClientRect();"
                          " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        tip = browser.wait_for("(() => { const t = document.getElementById('tip'); "
                               "return t.style.display === 'block' && t.innerText; })()", "the hover box")
        nats = data["surprisal"]["nats"][i]
        assert f"{nats:.2f} nats" in tip and "top guesses" in tip
        for guess, p in data["surprisal"]["top"][i]:  # the model's top 3 with their probabilities, in order
            assert f"{p:.4f}" in tip
        top = data["surprisal"]["top"][i]
        assert tip.index(f"{top[0][1]:.4f}") < tip.index(f"{top[2][1]:.4f}")
        before = browser.js("document.querySelectorAll('#text span')[5].style.background")
        surprising = max(range(1500), key=lambda j: data["surprisal"]["nats"][j])
        shade = browser.js(f"document.querySelectorAll('#text span')[{surprising}].style.background")
        assert shade != "rgb(255, 255, 255)"
        shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
        folder = Path(os.environ.get("CHARNN_TEST_ARTIFACTS", tmp_path))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "show.png").write_bytes(shot)
        assert shot.startswith(b"\x89PNG") and len(shot) > 10_000

        browser.js("const m = document.getElementById('mode'); m.value = '1'; m.dispatchEvent(new Event('change'))")
        time.sleep(0.1)
        assert browser.js("document.getElementById('legend').textContent").startswith("activation")
        assert browser.js("document.querySelectorAll('#text span')[5].style.background") != before
        assert browser.js("document.querySelectorAll('#gradients polyline').length") == 1
        assert browser.js("document.querySelectorAll('#cells tr').length") == len(data["cells"]) + 1
    finally:
        browser.close()


def test_a_page_of_a_long_text_keeps_its_menu_and_tables(trained_run, tmp_path):
    """Past ~125k characters with --cells the page's script overflowed the stack (Math.max(...values)): no colour
    menu, no hover box, no unit table."""
    from conftest import make_text

    text = tmp_path / "long.txt"
    text.write_text(make_text(6000, seed=5)[:200_000], encoding="utf-8")
    page = tmp_path / "long.html"
    r = CliRunner().invoke(app, ["show", str(trained_run.run_dir), str(text), "--cells", "--html", str(page),
                                 "--max-chars", "200000", "--top-k", "1"])
    assert r.exit_code == 0, r.stderr
    browser = DevTools(tmp_path / "profile")
    try:
        browser.open(page.as_uri())
        browser.wait_for("document.readyState === 'complete' && document.querySelectorAll('#text span').length",
                         "the text", timeout=120)
        assert browser.js("document.getElementById('mode').options.length") > 1
        assert browser.js("document.querySelectorAll('#cells tr').length") > 1
    finally:
        browser.close()


def test_the_playground_colours_a_completion_by_probability(trained_run, tmp_path):
    """Generate with 'colour by probability' ticked: the prompt and completion come back as one span per
    token, shaded by the server's log-probabilities (which add up to `Model.score`'s nats); unticking restores
    the plain text."""
    import charnn

    server = test_serve_browser.Served(trained_run.run_dir)
    try:
        browser = DevTools(tmp_path / "profile")
    except BaseException:  # (no browser, or one that will not start: the server must not outlive the test)
        server.close()
        raise
    try:
        browser.open(server.url + "/")
        browser.wait_for("document.readyState === 'complete' && document.getElementById('model').options.length",
                         "the model list")
        browser.js("document.getElementById('prompt').value = 'the cat'; document.getElementById('length').value = "
                   "'120'; document.getElementById('seed').value = '4'")
        browser.click("#colour")
        browser.click("#go")
        browser.wait_for("document.getElementById('out').className === 'coloured'", "the coloured completion")
        spans = browser.js("[...document.querySelectorAll('#out span')].map(s => [s.textContent, s.title, "
                           "s.style.background])")
        text = "".join(t for t, _, _ in spans)
        model = charnn.load(trained_run.run_dir, device="cpu")
        assert text == "the cat" + model.generate("the cat", length=120, temperature=0.8, seed=4)
        assert len(spans) == len(text) and all(title.startswith("p = ") for _, title, _ in spans)
        nats = sum(float(title.split("(")[1].split(" nats")[0]) for _, title, _ in spans)
        assert nats == pytest.approx(model.score(text).nats, abs=0.01 * len(spans))  # the titles round to 0.01
        assert len({bg for _, _, bg in spans}) > 3  # shades, not one colour
        shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
        folder = Path(os.environ.get("CHARNN_TEST_ARTIFACTS", tmp_path))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "playground-colour.png").write_bytes(shot)
        browser.click("#colour")
        assert browser.js("document.getElementById('out').textContent") == text
        assert browser.js("document.querySelectorAll('#out span').length") == 1  # the prompt's span only
    finally:
        browser.close()
        server.close()
