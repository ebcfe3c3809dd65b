"""``janusflow demo``: form checks, the session's answers and images (the same as the library's),
the page's handlers on a tiny random checkpoint, and the page itself in headless Chromium."""

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from janusflow.configs import presets
from janusflow.perf.bench_sample import random_model
from janusflow.cli.main import main as cli_main
from janusflow.demo.session import (DemoInputError, DemoSession, GenerationRequest, Limits, check_generation,
                                    check_understanding, read_upload, real_number, trajectory_steps,
                                    whole_number)

_T = presets.tiny()
CFG = presets.tiny(llm=dataclasses.replace(_T.llm, num_layers=2), repa_layer=1)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random model saved as a checkpoint with a tiny tokenizer beside it."""
    from janusflow.checkpoint import model_io
    from janusflow.data.tokenizer import build_tiny_tokenizer
    ckpt = model_io.save_model(str(tmp_path_factory.mktemp("demo") / "ckpt"), random_model(CFG, seed=0), CFG)
    build_tiny_tokenizer(["a red circle", "what colour is the square?"] * 10,
                         vocab_size=CFG.llm.vocab_size).save(os.path.join(ckpt, "tokenizer.json"))
    return ckpt


@pytest.fixture(scope="module")
def session(checkpoint):
    return DemoSession.load(checkpoint, log=lambda m: None)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("uploads")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(d / "ok.png")
    (d / "broken.png").write_bytes(b"this is not a PNG")
    (d / "notes.txt").write_text("not an image either")
    return str(d / "ok.png"), str(d / "broken.png"), str(d / "notes.txt")


def test_numbers_from_the_form():
    assert whole_number(4.0, "N", 1, 8) == 4 and whole_number("3", "N", 1, 8) == 3
    assert real_number("0.5", "T", 0.0, 1.0) == 0.5
    for bad, match in ((4.5, "whole number"), (0, "from 1 to 8"), (9, "from 1 to 8"), (True, "enter a number"),
                       (None, "enter a number"), (float("nan"), "finite"), ("x", "not a number"), ([1], "enter")):
        with pytest.raises(DemoInputError, match=match):
            whole_number(bad, "N", 1, 8)
    with pytest.raises(DemoInputError, match="above 0 to 1"):
        real_number(0.0, "Top-p", 0.0, 1.0, lo_open=True)


def test_generation_and_understanding_requests_are_checked():
    ok = dict(prompt=" a red circle ", n=2.0, cfg_weight=2, steps=3, solver="euler", seed=7, trajectory=True)
    assert check_generation(**ok) == GenerationRequest("a red circle", 2, 2.0, 3, "euler", 7, True)
    for change, match in ((dict(prompt="   "), "Prompt: empty"), (dict(prompt=None), "Prompt: empty"),
                          (dict(prompt="x" * 2001), "at most 2000"), (dict(n=0), "Number of images"),
                          (dict(n=9), "Number of images"), (dict(steps=101), "Steps"),
                          (dict(cfg_weight=-1), "CFG weight"), (dict(solver="rk4"), "Solver"),
                          (dict(seed=-1), "Seed"), (dict(trajectory="false"), "checkbox"),
                          (dict(solver="heun"), "Euler sampler")):
        with pytest.raises(DemoInputError, match=match):
            check_generation(**{**ok, **change})
    assert check_generation(**{**ok, "n": 12}, limits=Limits(max_images=16)).n == 12
    und = dict(question="what?", max_new_tokens=8, temperature=0, top_p=1, seed=0)
    assert check_understanding(**und).max_new_tokens == 8
    for change, match in ((dict(question=""), "Question"), (dict(max_new_tokens=0), "Max new tokens"),
                          (dict(temperature=3), "Temperature"), (dict(top_p=0), "Top-p")):
        with pytest.raises(DemoInputError, match=match):
            check_understanding(**{**und, **change})


def test_uploads(files):
    ok, broken = files[:2]
    assert read_upload(ok).shape == (40, 30, 3)
    with pytest.raises(DemoInputError) as e:
        read_upload(broken)
    # the user's file name, not the server's temporary path
    assert "broken.png is not a readable image" in str(e.value) and os.path.dirname(broken) not in str(e.value)
    with pytest.raises(DemoInputError, match="upload an image first"):
        read_upload(None)


def test_trajectory_steps():
    assert trajectory_steps(3) == (0, 1, 2)
    assert trajectory_steps(30) == (0, 6, 12, 17, 23, 29)


def test_session_images_are_the_samplers(session):
    from janusflow.sample.generate import generate
    req = check_generation("a red circle", 2, 3.0, 2, "euler", 5, True)
    ticks = []
    gallery, grid = session.generate(req, lambda done, total: ticks.append((done, total)))
    assert ticks[0] == (0, 2) and ticks[-1] == (2, 2)
    assert [c for _, c in gallery] == ["#0 · seed 5 · CFG 3 · 2 euler steps", "#1 · seed 5 · CFG 3 · 2 euler steps"]
    from janusflow.data.tokenizer import generation_prompt_ids
    ids = [generation_prompt_ids(session.tokenizer, "a red circle", session.cfg.head)]
    ref = generate(session.model, session.vae, session.cfg, ids, num_samples=2, cfg_weight=3.0, steps=2, seed=5,
                   progress=False, pad_id=session.tokenizer.pad_id)
    for (img, _), r in zip(gallery, ref):
        assert img.dtype == np.uint8 and np.abs(img.astype(int) - r.astype(int)).max() <= 1
    # the trajectory grid's top row is image #0 (same noise), rounded instead of truncated
    h, w = CFG.image_size, CFG.image_size
    assert np.abs(grid[2:2 + h, 2:2 + w].astype(int) - gallery[0][0].astype(int)).max() <= 2
    assert check_generation("a red circle", 1, 3.0, 2, "euler", 5).trajectory is False


def test_session_answer_streams(session, files):
    from janusflow.sample.chat import answer
    img = read_upload(files[0])
    req = check_understanding("what colour is the square?", 5, 0, 1, 0)
    parts = list(session.answer(img, req))
    assert len(parts) == 5 and parts[-1] == answer(session.model, session.cfg, session.tokenizer, [img],
                                                   [req.question], max_new_tokens=5)[0]


def test_page_handlers_answer_bad_input_with_a_message(session, files):
    from janusflow.demo.app import make_handlers, on_upload
    ask, generate = make_handlers(session)
    ok, broken = files[:2]
    preview, status = on_upload(broken)
    assert preview is None and status.startswith("**Error:** Image: broken.png is not a readable image")
    assert on_upload(ok)[0].shape == (40, 30, 3)
    out = list(ask(broken, "what?", 4, 0, 1, 0))
    assert out == [("", out[0][1])] and "broken.png is not a readable image" in out[0][1]
    out = list(ask(ok, "  ", 4, 0, 1, 0))
    assert out[-1][1] == "**Error:** Question: empty; type some text"
    out = list(ask(ok, "what?", 3, 0, 1, 0))
    assert out[-1][1] == "" and out[-1][0] and len(out) == 1 + 3 + 1   # status, 3 tokens, done
    gallery, settings, grid, status = generate("", 1, 2, 2, "euler", 0, False, progress=lambda *a, **k: None)
    assert (gallery, settings, grid) == ([], "", None) and status == "**Error:** Prompt: empty; type some text"
    long_prompt = "xz" * 900       # under the character limit, past the tiny model's context in tokens
    status = generate(long_prompt, 1, 2, 2, "euler", 0, False, progress=lambda *a, **k: None)[3]
    assert status.startswith("**Error:** prompt 0 has") and "context" in status
    gallery, settings, grid, status = generate("a red circle", 1, 2, 2, "euler", 0, False,
                                               progress=lambda *a, **k: None)
    assert status == "" and len(gallery) == 1 and grid is None and "2 euler steps, seed 0" in settings


def test_cli_demo_refuses_before_loading(tmp_path, capsys):
    from janusflow.cli.main import build_parser
    args = build_parser().parse_args(["demo", "--checkpoint", "ck"])
    assert (args.host, args.port) == ("127.0.0.1", 7860)        # this machine only unless told
    assert cli_main(["demo", "--checkpoint", str(tmp_path), "--port", "0"]) == 1
    assert "--port 0: must be from 1 to 65535" in capsys.readouterr().err
    assert cli_main(["demo", "--checkpoint", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("janusflow demo: error:") and "Traceback" not in err


# ------------------------------------------------------------------------------ browser
@pytest.fixture
def chromium():
    """The system Chromium's path; skips (the reason printed with -rs) where there is none."""
    for name in (os.environ.get("JANUSFLOW_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = name and shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium found (apt-get install chromium, or set JANUSFLOW_CHROMIUM)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(checkpoint, tmp_path):
    """`janusflow demo` on the tiny checkpoint in a subprocess; yields its URL."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "janusflow.cli", "demo", "--checkpoint", checkpoint,
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the demo exited ({proc.returncode}): {(tmp_path / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"the demo did not answer in 300 s: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
def test_demo_in_headless_chromium(chromium, served, files, tmp_path):
    """Page loads; a bad upload and an empty prompt get messages; a question gets text; a
    generation gets an image. JANUSFLOW_DEMO_SCREENSHOTS=DIR keeps a PNG of each tab there."""
    from playwright.sync_api import expect, sync_playwright
    ok, broken, text_file = files
    shots = os.environ.get("JANUSFLOW_DEMO_SCREENSHOTS") or str(tmp_path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                     args=["--no-sandbox"] if os.geteuid() == 0 else [])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 720})
            page.goto(served)
            expect(page.get_by_role("tab", name="Understanding")).to_be_visible(timeout=60_000)
            upload = page.locator("#und-upload input[type=file]")
            upload.set_input_files(broken)
            expect(page.locator("#und-status")).to_contain_text("broken.png is not a readable image",
                                                                timeout=60_000)
            page.locator("#und-upload button[aria-label=Clear]").click()
            upload.set_input_files(ok)
            expect(page.locator("#und-preview img")).to_be_visible(timeout=60_000)
            expect(page.locator("#und-status")).to_have_text("", timeout=10_000)
            page.fill("#und-question textarea", "what colour is the square?")
            page.click("#und-ask")
            expect(page.locator("#und-answer textarea")).not_to_have_value("", timeout=180_000)
            expect(page.locator("#und-status")).to_have_text("", timeout=180_000)
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=os.path.join(shots, "demo_understanding.png"))
            page.locator("#und-upload button[aria-label=Clear]").click()
            upload.set_input_files(text_file)           # refused by Gradio's own type check
            refused = page.get_by_text("Invalid file type: notes.txt")
            expect(refused).to_be_visible(timeout=60_000)
            expect(refused).to_be_hidden(timeout=60_000)    # the message times out (not in the next screenshot)

            page.get_by_role("tab", name="Generation").click()
            page.click("#gen-run")                      # no prompt yet
            expect(page.locator("#gen-status")).to_contain_text("Prompt: empty", timeout=60_000)
            page.fill("#gen-prompt textarea", "a red circle")
            steps = page.locator("#gen-steps input[type=number]")
            steps.fill("4")
            steps.press("Enter")
            page.locator("label", has_text="Trajectory grid").click()
            page.click("#gen-run")
            expect(page.locator("#gen-gallery img")).to_have_count(4, timeout=240_000)
            expect(page.locator("#gen-settings")).to_contain_text("4 euler steps", timeout=10_000)
            expect(page.locator("#gen-trajectory img")).to_be_visible(timeout=10_000)
            expect(page.locator("#gen-status")).to_have_text("", timeout=10_000)
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=os.path.join(shots, "demo_generation.png"), full_page=True)
        finally:
            browser.close()


def test_session_generates_with_a_janus_pro_checkpoint(tmp_path):
    """A Janus-Pro checkpoint's Generation tab samples image tokens (the family's CFG weight 5 by
    default, no steps/solver/trajectory): the images are `janusflow sample`'s for the same seed."""
    from janusflow.checkpoint import model_io
    from janusflow.data.tokenizer import build_tiny_tokenizer, generation_prompt_ids
    from janusflow.sample.ar_generate import generate_ar
    cfg = presets.tiny_janus_pro(llm=dataclasses.replace(presets.tiny_janus_pro().llm, num_layers=1), repa_layer=1)
    ckpt = model_io.save_model(str(tmp_path / "ckpt"), random_model(cfg, seed=0), cfg)
    build_tiny_tokenizer(["<|User|>: a red circle"] * 10, vocab_size=cfg.llm.vocab_size).save(
        os.path.join(ckpt, "tokenizer.json"))
    s = DemoSession.load(ckpt, log=lambda m: None)
    assert s.can_generate and s.vae is None and s.default_cfg_weight == 5.0
    req = check_generation("a red circle", 2, 5.0, 1, "euler", 4, True)
    gallery, grid = s.generate(req)
    assert grid is None and [c for _, c in gallery] == ["#0 · seed 4 · CFG 5 · image tokens",
                                                         "#1 · seed 4 · CFG 5 · image tokens"]
    # the official Janus-Pro sequence (its README's roles, then <begin_of_image>)
    ids = [s.tokenizer.encode("<|User|>: a red circle\n\n<|Assistant|>:<begin_of_image>")]
    want = generate_ar(s.model, s.cfg, ids, num_samples=2, seed=4, pad_id=s.tokenizer.pad_id)
    for (img, _), w in zip(gallery, want):
        np.testing.assert_array_equal(img, w)
    from janusflow.demo.app import make_handlers
    _, generate = make_handlers(s)
    _, settings, grid, err = generate("a red circle", 1, 5.0, 1, "euler", 4, False, progress=lambda *a, **k: None)
    assert err == "" and "image tokens" in settings and "steps" not in settings
