"""`charnn show` and the numbers behind it (charnn.inspect): surprisal adds up to `eval`'s nats, every layer's
units (an LSTM's c too) agree with torch's own stack, a unit planted to track quotes is found first, the
gradient's reach falls faster for a small vanilla RNN than for an LSTM, and the command's outputs and errors."""

import json
import random
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import make_text, one_line_error, train_tiny_pairs
from typer.testing import CliRunner

import charnn
from charnn.checkpoint import load_checkpoint, save_checkpoint
from charnn.cli import app
from charnn.models.configs import LMConfig
from charnn.errors import CharnnError
from charnn.inspect.activations import activations
from charnn.inspect.gradients import gradient_reach
from charnn.inspect.properties import correlations, text_properties
from charnn.models.lm import CharRNN
from charnn.models.units import layer_units
from charnn.text.tokenizer import CharTokenizer

runner = CliRunner()
CPU = torch.device("cpu")


def invoke(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_every_layers_units_agree_with_torchs_stack(cls, bidirectional):
    """Each layer's h (and an LSTM's c) at the steps torch reports them: the last layer's whole output, and
    every layer's and direction's final state, from a given initial state; N, T, D, H all different."""
    torch.manual_seed(0)
    B, T, D, H, L = 3, 4, 5, 6, 2
    dirs = 2 if bidirectional else 1
    rnn = cls(D, H, L, batch_first=True, bidirectional=bidirectional)
    x = torch.randn(B, T, D)
    h0 = torch.randn(L * dirs, B, H)
    state = (h0, torch.randn(L * dirs, B, H)) if cls is nn.LSTM else h0
    with torch.no_grad():
        acts, names = layer_units(rnn, x, state)
        out, final = rnn(x, state)
    parts = 2 if cls is nn.LSTM else 1
    assert acts.shape == (B, T, L * dirs * parts * H) and len(names) == acts.shape[-1]
    block = lambda layer, d, part: acts[..., ((layer * dirs + d) * parts + part) * H:][..., :H]  # noqa: E731
    for layer in range(L):
        for d in range(dirs):
            at = -1 if d == 0 else 0  # a backward direction ends at the first step
            h_n, c_n = (final[0], final[1]) if cls is nn.LSTM else (final, None)
            assert torch.allclose(block(layer, d, 0)[:, at], h_n[layer * dirs + d], atol=1e-6)
            if c_n is not None:
                assert torch.allclose(block(layer, d, 1)[:, at], c_n[layer * dirs + d], atol=1e-5)
                assert names[((layer * dirs + d) * parts + 1) * H].startswith(f"L{layer + 1}{' rev' if d else ''} c")
        assert torch.allclose(torch.cat([block(L - 1, d, 0) for d in range(dirs)], -1), out, atol=1e-6)


def test_surprisal_adds_up_to_evals_total(trained_run, tmp_path):
    """Model.surprisal and `charnn show --format tsv` both sum to the nats `charnn eval` reports for the text."""
    text = make_text(40, seed=5) + "ünknown ~ chars\n"
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    model = charnn.load(trained_run.run_dir, device="cpu")
    found = model.surprisal(text, top_k=3)
    assert len(found.tokens) == len(text) and "".join(found.tokens) == text
    r = invoke("eval", trained_run.run_dir, tmp_path / "t.txt", "--json")
    total = json.loads(r.stdout)["nats_per_char"] * len(text)
    assert found.total == pytest.approx(total, rel=1e-6)
    assert found.total == pytest.approx(-sum(model.token_logprobs(text)["token_logprobs"]), rel=1e-9)
    assert np.all(np.diff(found.top_logprobs, axis=1) <= 0) and found.top_ids.shape == (len(text), 3)
    out = invoke("show", trained_run.run_dir, tmp_path / "t.txt", "--top-k", "3")  # not a terminal: tsv
    assert out.exit_code == 0, out.stderr
    rows = out.stdout.splitlines()
    assert rows[0].split("\t") == ["token", "prob", "nats", "top1", "p1", "top2", "p2", "top3", "p3"]
    assert len(rows) == len(text) + 1 and "\x1b" not in out.stdout
    assert sum(float(row.split("\t")[2]) for row in rows[1:]) == pytest.approx(total, rel=1e-5)
    assert rows[-1].split("\t")[0] == "\\n"  # the newline, escaped so each token stays one line


def _planted(tmp_path, trained_run):
    """A hand-built one-layer LSTM (embed 5, hidden 6) whose unit 0 flips its cell state at every double quote
    and holds it in between, saved as a checkpoint; the other units are random and never see a quote."""
    rng = random.Random(0)
    words = "the cat sat on a mat and said so then left".split()
    text = "".join(" ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) + rng.choice(['"', ' "', ', ', '. '])
                   for _ in range(300))
    tok = CharTokenizer.build(text + "\n")
    cfg = LMConfig(vocab_size=tok.vocab_size, cell="lstm", layers=1, hidden=6, embed=5, dropout=0.0)
    torch.manual_seed(1)
    net, H, q = CharRNN(cfg), 6, int(tok.encode('"')[0])
    with torch.no_grad():
        net.embed.weight[:, 0] = 0.0
        net.embed.weight[q] = 0.0
        net.embed.weight[q, 0] = 1.0  # dimension 0: "this is a quote"
        w_ih, w_hh, b_ih, b_hh = net.rnn.weight_ih_l0, net.rnn.weight_hh_l0, net.rnn.bias_ih_l0, net.rnn.bias_hh_l0
        w_ih[:, 0] = 0.0  # no unit sees the quote dimension ...
        w_hh[:, 0] = 0.0  # ... or reads unit 0, except unit 0 itself below
        for gate in range(4):
            w_ih[gate * H], w_hh[gate * H], b_ih[gate * H], b_hh[gate * H] = 0.0, 0.0, 0.0, 0.0
        w_ih[0, 0], b_ih[0] = 20.0, -10.0  # input gate: open on a quote only
        w_ih[H, 0], b_ih[H] = -20.0, 10.0  # forget gate: closed on a quote only
        w_hh[2 * H, 0], b_ih[2 * H] = -20.0, -2.0  # candidate: minus the sign of unit 0's h, so a quote flips c
        b_ih[3 * H] = 10.0  # output gate open
    data = load_checkpoint(trained_run.run_dir / "best.pt")
    data.update(model_config={**data["model_config"], **cfg.__dict__, "kind": "lm"}, tokenizer=tok.state(),
                model=net.state_dict())
    data["model_config"]["vocab_size"] = tok.vocab_size
    save_checkpoint(data, tmp_path / "planted.pt")
    (tmp_path / "quotes.txt").write_text(text, encoding="utf-8")
    return tmp_path / "planted.pt", tmp_path / "quotes.txt", net, tok, text


def test_a_unit_planted_to_track_quotes_is_found_first(tmp_path, trained_run):
    ckpt, path, net, tok, text = _planted(tmp_path, trained_run)
    acts = activations(net, tok, text, CPU)
    inside = text_properties(text)["inside quotes"]
    r = correlations(acts.values, inside)
    assert abs(r[acts.names.index("L1 c 0")]) > 0.95  # the plant works: c flips at each quote
    out = invoke("show", ckpt, path, "--cells", "--format", "tsv")
    assert out.exit_code == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert rows[0] == ["property", "rank", "unit", "r"]
    quotes = [row for row in rows if row[0] == "inside quotes"]
    assert quotes[0][1] == "1" and quotes[0][2] in ("L1 c 0", "L1 h 0") and abs(float(quotes[0][3])) > 0.95
    assert {row[0] for row in rows[1:]} >= {"inside quotes", "line position", "word start"}
    page = json.loads(invoke("show", ckpt, path, "--cells", "--format", "json").stdout)
    first = page["cells"][[c["property"] for c in page["cells"]].index("inside quotes")]
    assert len(first["units"][0]["values"]) == len(text) and first["units"][0]["name"] == quotes[0][2]


def _reach(cell: str, text: str, scale: float = 1.0):
    tok = CharTokenizer.build(text)
    torch.manual_seed(0)
    net = CharRNN(LMConfig(vocab_size=tok.vocab_size, cell=cell, layers=1, hidden=32, embed=16, dropout=0.0))
    with torch.no_grad():
        for name, p in net.rnn.named_parameters():
            if name.startswith("weight"):
                p.mul_(scale)
    return gradient_reach(net, tok, text, CPU, max_k=40, positions=32), net, tok


def test_a_small_vanilla_rnns_gradient_vanishes_sooner_than_an_lstms():
    """The articles' vanishing gradient, measured: 20 steps back, a vanilla RNN with small weights keeps a far
    smaller share of the nearest input's pull on the loss than an LSTM with its forget bias of 1."""
    text = make_text(60, seed=2)
    rnn, _, _ = _reach("rnn", text, scale=0.5)
    lstm, _, _ = _reach("lstm", text)
    assert rnn.relative[0] == lstm.relative[0] == 1.0 and len(rnn.norms) == 41 and rnn.positions == 32
    assert rnn.relative[20] < lstm.relative[20] / 100
    assert np.all(rnn.relative[5:] < lstm.relative[5:])


def test_the_batched_gradient_equals_one_backward_through_the_whole_prefix():
    """With one position whose warm-up reaches back to the text's start, the batched rows are exactly the
    naive computation: the gradient of that position's loss at every earlier embedding."""
    text = make_text(2, seed=3)[:30]
    g, net, tok = _reach("gru", text)
    from charnn.inspect import gradients as grads
    g = grads.gradient_reach(net, tok, text, CPU, max_k=10, positions=1, warmup=100)
    ids = torch.as_tensor(tok.encode(text))
    inputs = torch.cat([torch.tensor([int(tok.encode("\n")[0])]), ids[:-1]])
    e = net.embed(inputs[None]).detach().requires_grad_(True)
    h, _ = net.rnn(e)
    loss = torch.nn.functional.cross_entropy(net.head(h)[0, -1:], ids[-1:])
    (grad,) = torch.autograd.grad(loss, e)
    naive = grad[0].norm(dim=-1).flip(0)[:11].numpy()
    assert g.positions == 1 and g.warmup == len(text) - 11
    assert np.allclose(g.norms, naive, rtol=1e-4, atol=1e-9)


def test_cells_and_gradients_through_the_command(trained_run, corpus_file):
    out = invoke("show", trained_run.run_dir, corpus_file, "--gradients", "--max-k", "30", "--format", "tsv")
    assert out.exit_code == 0, out.stderr
    rows = out.stdout.splitlines()
    assert rows[0] == "k\tnorm\trelative" and len(rows) == 32 and rows[1].endswith("\t1")
    colour = invoke("show", trained_run.run_dir, corpus_file, "--cells", "--gradients", "--format", "color",
                    "--max-chars", "2000")
    assert colour.exit_code == 0 and "\x1b[" in colour.stdout and "gradient reach" in colour.stdout
    assert "inside brackets" not in colour.stdout  # the corpus has no brackets: nothing to rank
    assert "line position" in colour.stdout and "L2 c" in colour.stdout
    assert "first 2,000 characters" in colour.stderr


def test_html_page_is_self_contained(trained_run, corpus_file, tmp_path):
    out = invoke("show", trained_run.run_dir, corpus_file, "--cells", "--gradients", "--html", tmp_path / "p.html",
                 "--max-chars", "3000")
    assert out.exit_code == 0, out.stderr
    assert out.stdout == "" and "wrote" in out.stderr  # with --html, nothing on stdout unless --format asks
    page = (tmp_path / "p.html").read_text(encoding="utf-8")
    assert "src=" not in page and "href=" not in page and "@import" not in page and "url(" not in page
    data = json.loads(page.split('<script id="data" type="application/json">')[1].split("</script>")[0])
    assert len(data["tokens"]) == 3000 and len(data["surprisal"]["top"][0]) == 5 and data["gradients"]["positions"]
    # a page that cannot be written is refused before the work (it was found after it: 59 s on 1 MB)
    one_line_error(invoke("show", trained_run.run_dir, corpus_file, "--html", tmp_path / "no" / "p.html"), 2,
                   "does not exist")
    one_line_error(invoke("show", trained_run.run_dir, corpus_file, "--html", tmp_path), 2, "names no file")
    one_line_error(invoke("show", trained_run.run_dir, corpus_file, "--html", ""), 2, "--html '' names no file")
    # (it said "file '' is a directory", then "--html '.'"); plot -o the same ways (it made the missing folders):
    one_line_error(invoke("plot", trained_run.run_dir, "-o", tmp_path / "no" / "c.png"), 2, "does not exist")
    assert not (tmp_path / "no").exists()
    model = (trained_run.run_dir / "best.pt").read_bytes()  # (--html best.pt wrote a page over the model)
    shutil.copy(trained_run.run_dir / "best.pt", tmp_path / "best.pt")
    one_line_error(invoke("show", trained_run.run_dir, corpus_file, "--html", tmp_path / "best.pt"), 2,
                   "is a checkpoint; refusing to write over it")
    assert (tmp_path / "best.pt").read_bytes() == model


def test_a_labelled_models_units_are_ranked_against_its_labels(tmp_path):
    rows = [f"{lang}\t{w}" for lang, ws in (("a", "aaa ab ba"), ("b", "bbb bc cb")) for w in ws.split() * 20]
    (tmp_path / "rows.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    charnn.train([str(tmp_path / "rows.tsv")], label_by="line", out=str(tmp_path), name="l", max_steps=5,
                 eval_every=5, batch_size=4, seq_len=16, hidden=16, layers=1, embed=8, device="cpu")
    (tmp_path / "t.txt").write_text("aaa bc ab ba cb bbb\n", encoding="utf-8")  # (16 tokens at least, read once)
    out = invoke("show", tmp_path / "l", tmp_path / "t.txt", "--cells", "--format", "tsv")
    assert out.exit_code == 0, out.stderr
    assert {"label a", "label b"} <= {line.split("\t")[0] for line in out.stdout.splitlines()}
    for short in ("ab", "the ca"):  # r over a few points is +-1: refused, one line (6 characters read under each
        (tmp_path / "short.txt").write_text(short, encoding="utf-8")  # of 2 labels, 12 + 2 points, passed)
        one_line_error(invoke("show", tmp_path / "l", tmp_path / "short.txt", "--cells"), 1, "--cells", "16 tokens")
    one = invoke("show", tmp_path / "l", tmp_path / "t.txt", "--label", "b", "--format", "json")
    assert one.exit_code == 0 and len(json.loads(one.stdout)["tokens"]) == 20


def test_sequence_to_sequence_cells_and_attention(tmp_path):
    run = train_tiny_pairs(tmp_path, tmp_path / "runs")
    (tmp_path / "in.txt").write_text("abc\ncde\nbcd\neab\n", encoding="utf-8")
    out = invoke("show", run, tmp_path / "in.txt", "--attention", "--cells", "--format", "json")
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["kind"] == "seq2seq" and "".join(data["tokens"]) == "abc\ncde\nbcd\neab\n"
    assert data["cells"] and data["units"] == 2 * 2 * 16  # both directions' h and c, one layer of 16
    first = data["attention"][0]
    assert first["source"] == list("abc\n") and first["output"][-1] == "\n"
    weights = np.array(first["weights"])
    assert weights.shape == (len(first["output"]), 4) and np.allclose(weights.sum(1), 1, atol=1e-3)
    model = charnn.load(run, device="cpu")
    assert model.attention("abc").weights.shape == weights.shape
    assert model.activations("abc\n").values.shape == (4, 64)
    one_line_error(invoke("show", run, tmp_path / "in.txt", "--attention", "--label", "x"), 2, "--label")  # (ignored)
    tsv = invoke("show", run, tmp_path / "in.txt", "--attention", "--format", "tsv")
    assert tsv.stdout.splitlines()[0] == "output\\input\ta\tb\tc\t\\n"
    for args, words in (([], "--cells"), (["--gradients"], "language models")):
        one_line_error(invoke("show", run, tmp_path / "in.txt", *args), 1, words)


def test_subword_models_show_whole_characters_and_a_subword_classifiers_units(tmp_path):
    """A bpe model's byte pieces were each shown (and counted) as a U+FFFD, so show's characters and nats/char
    disagreed with eval's; a bpe classifier's --cells was a traceback (its units per piece, its tokens per
    character); --cells on a text where no property varies fell back to the surprisal table without a word."""
    rows = [f"{lab}\t{w}" for lab, ws in (("a", "the cat sat"), ("b", "a dog ran")) for w in [ws] * 40]
    (tmp_path / "rows.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    small = dict(out=str(tmp_path), max_steps=3, eval_every=3, batch_size=4, seq_len=16, hidden=16, layers=1,
                 embed=8, device="cpu", tokenizer="bpe", vocab_size=300)
    charnn.train([str(tmp_path / "rows.tsv")], label_by="line", classifier=True, name="c", **small)
    charnn.train([str(tmp_path / "rows.tsv")], name="lm", **small)
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on a mat \u2713 \u65e5\u672c\na dog ran to the barn\n", encoding="utf-8")
    cells = invoke("show", tmp_path / "c", text, "--cells", "--format", "json")
    assert cells.exit_code == 0, cells.stderr
    assert "".join(json.loads(cells.stdout)["tokens"]) == text.read_text(encoding="utf-8") and json.loads(
        cells.stdout)["cells"]
    shown = json.loads(invoke("show", tmp_path / "lm", text, "--format", "json").stdout)
    assert "".join(shown["tokens"]) == text.read_text(encoding="utf-8") and "\ufffd" not in "".join(shown["tokens"])
    said = invoke("show", tmp_path / "lm", text, "--format", "color").stdout
    scored = json.loads(invoke("eval", tmp_path / "lm", text, "--json").stdout)
    assert f"{scored['chars']} characters" in said and f"{scored['nats_per_char']:.4f} nats/char" in said
    (tmp_path / "blank.txt").write_text("\n" * 20, encoding="utf-8")
    flat = invoke("show", tmp_path / "lm", tmp_path / "blank.txt", "--cells", "--format", "color")
    assert flat.exit_code == 0 and "nothing to track" in flat.stdout and "surprisal, nats" not in flat.stdout


def test_a_character_the_model_lacks_is_noted_as_eval_notes_it(trained_run, tmp_path):
    (tmp_path / "t.txt").write_text("the cat \u2603 sat\n", encoding="utf-8")  # (scored as unknown without a word)
    r = invoke("show", trained_run.run_dir, tmp_path / "t.txt", "--format", "tsv")
    assert r.exit_code == 0 and "1 character is not in the model's vocabulary" in r.stderr
    assert invoke("show", trained_run.run_dir, tmp_path / "t.txt", "--format", "tsv", "-q").stderr == ""


def test_a_kind_without_the_hook_says_so(trained_run):
    class NoUnits(nn.Module):
        pass
    with pytest.raises(CharnnError, match="unit_activations"):
        activations(NoUnits(), CharTokenizer.build("ab"), "ab", CPU)


@pytest.mark.parametrize("setup, args, code, words", [
    (None, ["no/such/run", "{f}"], 1, "does not exist"),
    ("", ["{run}", "{f}"], 1, "is empty"),
    (b"\x00\x01binary", ["{run}", "{f}"], 1, "binary"),
    ("hi\n", ["{run}", "{f}", "--attention"], 1, "sequence-to-sequence"),
    ("hi\n", ["{run}", "{f}", "--format", "xml"], 2, "--format"),
    ("hi\n", ["{run}", "{f}", "--top-k", "0"], 2, "--top-k"),
    ("hi\n", ["{run}", "{f}", "--label", "x"], 1, "without labels"),
    ("hi\n", ["{run}", "{f}", "{f}"], 2, "one CHECKPOINT"),
    ("hi\n", ["{run}", "{f}", "--threads", "100000"], 2, "--threads"),  # (a segfault: its own option had no bound)
])
def test_mistakes_are_one_line(trained_run, tmp_path, setup, args, code, words):
    f = tmp_path / "text.txt"
    if isinstance(setup, bytes):
        f.write_bytes(setup)
    elif setup is not None:
        f.write_text(setup, encoding="utf-8")
    one_line_error(invoke("show", *[a.format(run=trained_run.run_dir, f=f) for a in args]), code, words)


def test_stdin_and_its_mistakes(trained_run):
    ok = invoke("show", trained_run.run_dir, "-", input="the cat\n")
    assert ok.exit_code == 0 and len(ok.stdout.splitlines()) == 9
    one_line_error(invoke("show", trained_run.run_dir, "-", input=""), 1, "empty")
    one_line_error(invoke("show", trained_run.run_dir, "-", input=b"\x00\x00x"), 1, "binary")


def test_in_a_shell_pipeline(trained_run):
    """`charnn sample | charnn show` in a real shell: tsv on a pipe, the nats column adds up to eval's total."""
    import subprocess
    import sys

    from conftest import subprocess_env
    run = trained_run.run_dir
    py = sys.executable
    cmd = (f"{py} -m charnn sample {run} --length 200 --seed 3 -q --device cpu | tee sample.txt | "
           f"{py} -m charnn show {run} - --top-k 2 --threads 1 | cut -f3")
    out = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                         env=subprocess_env(), cwd=trained_run.run_dir.parent, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()
    text = (trained_run.run_dir.parent / "sample.txt").read_text(encoding="utf-8")
    assert rows[0] == "nats" and len(rows) == len(text) + 1 and "\x1b" not in out.stdout
    model = charnn.load(run, device="cpu")
    assert sum(map(float, rows[1:])) == pytest.approx(model.score(text).nats, rel=1e-5)


def test_the_python_api_returns_the_numbers_as_arrays(trained_run):
    model = charnn.load(trained_run.run_dir, device="cpu")
    text = make_text(5, seed=1)
    acts = model.activations(text)
    assert acts.values.shape == (len(text), 2 * 2 * 64) and acts.names[0] == "L1 h 0" and acts.names[-1] == "L2 c 63"
    assert isinstance(acts.values, np.ndarray) and "".join(acts.tokens) == text
    reach = model.gradient_reach(text, max_k=12, positions=8)
    assert reach.norms.shape == (13,) and reach.positions == 8 and reach.relative[0] == 1.0
    assert np.array_equal(reach.norms, model.gradient_reach(text, max_k=12, positions=8).norms)  # seeded
    s = model.surprisal(text)
    assert s.nats.shape == (len(text),) and np.all(s.nats >= 0) and len(s.top(0)) == 5


def test_cells_of_a_model_of_many_labels_says_which_it_read(tmp_path):
    rows = tmp_path / "rows.tsv"
    rows.write_text("".join(f"l{i % 9}\tthe cat {'sat ran hid' if i % 2 else 'ate'} {i}\n" for i in range(270)),
                    encoding="utf-8")
    r = invoke("train", rows, "--label-by", "line", "--out", tmp_path / "runs", "--hidden", "16", "--embed", "8",
               "--layers", "1", "--max-steps", "2", "--threads", "1", "-q")
    assert r.exit_code == 0, r.stderr
    (tmp_path / "t.txt").write_text("the cat sat on the mat and ran\n" * 3, encoding="utf-8")
    r = invoke("show", tmp_path / "runs" / "rows", tmp_path / "t.txt", "--cells")
    assert r.exit_code == 0, r.stderr
    assert "--cells: the text read under the first 8 of the model's 9 labels" in r.stderr  # (it was silent)


def test_control_characters_and_markup_from_the_text_are_shown_not_obeyed(tmp_path):
    """A model whose vocabulary holds ESC and BEL wrote them raw into show's lines (ESC ]0; set the terminal's
    title, ESC [2J cleared it); "<!--" then "<script" in the page's data left it blank (the parser took the page's
    own </script> for text); a control character in a file name reached eval's table raw."""
    evil = "\x1b]0;pwned\x07 \x1b[2J <!--<script>x</script> & \u202e"
    text = (make_text(60, seed=3) + evil + "\n") * 8
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    r = invoke("train", tmp_path / "t.txt", "--out", tmp_path, "--hidden", "16", "--layers", "1", "--max-steps", "2",
               "--threads", "1", "-q")
    assert r.exit_code == 0, r.stderr
    sample = tmp_path / "s.txt"
    sample.write_text(evil + "\n", encoding="utf-8")
    for fmt in ("tsv", "color"):
        r = invoke("show", tmp_path / "t", sample, "--format", fmt)
        assert r.exit_code == 0 and "\\x1b" in r.stdout, r.stderr
        assert not any(c in r.stdout for c in "\x1b\x07\u202e") or fmt == "color" and "\x1b[" in r.stdout
    r = invoke("show", tmp_path / "t", sample, "--format", "tsv")
    assert not any(c in r.stdout for c in "\x1b\x07\u202e")
    r = invoke("show", tmp_path / "t", sample, "--html", tmp_path / "p.html")
    assert r.exit_code == 0, r.stderr
    page = (tmp_path / "p.html").read_text(encoding="utf-8")
    raw = page.split('<script id="data" type="application/json">')[1].split("</script>")[0]
    assert "<" not in raw and "&" not in raw and evil in "".join(json.loads(raw)["tokens"])
    named = tmp_path / "a\x1b[2Jb.txt"
    named.write_text(make_text(20, seed=1), encoding="utf-8")
    r = invoke("eval", tmp_path / "t", named)
    assert r.exit_code == 0 and "a\\x1b[2Jb.txt" in r.stdout and "\x1b" not in r.stdout, r.stdout
    one_line_error(invoke("eval", tmp_path / "t", tmp_path / "no\x07pe.txt"), 1, "no\\x07pe.txt")
