"""The Gradio page of ``janusflow demo``: an Understanding tab (upload, question, the answer
streamed in) and a Generation tab (prompt and sampler settings, a gallery, optionally the
trajectory grid of image #0).

Every handler catches what goes wrong and writes one line into the tab's status box: a bad
input (``DemoInputError``, ``ValueError``, ``OSError``) as its message, anything else as its
type and message with the traceback in the server log only. Requests go through Gradio's
queue one at a time: one model, one request on it.
"""

from __future__ import annotations

import os
import sys
import traceback

# no usage reporting from a local demo (and no waiting on a network that may not be there)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from janusflow.demo.session import (DemoInputError, DemoSession, check_generation,  # noqa: E402
                                    check_understanding, read_upload)

MAX_UPLOAD = "25mb"         # refused by the server before any decoding
QUEUE_SIZE = 32


def error_line(e: BaseException) -> str:
    """The status-box text of a failed request."""
    msg = " ".join(str(e).split())[:500]
    if isinstance(e, (DemoInputError, ValueError, OSError)):
        return f"**Error:** {msg}"
    traceback.print_exception(e, file=sys.stderr)
    return f"**Error:** {type(e).__name__}: {msg} (the server log has the details)"


def on_upload(path):
    """(preview image, status) for an uploaded file."""
    if not path:
        return None, ""
    try:
        return read_upload(path), ""
    except Exception as e:  # noqa: BLE001 -- shown in the page
        return None, error_line(e)


def make_handlers(session: DemoSession):
    """The two request handlers, bound to ``session``: generators of the tabs' outputs."""

    def ask(path, question, max_new_tokens, temperature, top_p, seed):
        try:
            req = check_understanding(question, max_new_tokens, temperature, top_p, seed, session.limits)
            image = read_upload(path)
            yield "", "*thinking...*"
            text = ""
            for text in session.answer(image, req):
                yield text, "*answering...*"
            yield text, "" if text else "*the model answered with nothing (end of text at once)*"
        except Exception as e:  # noqa: BLE001 -- shown in the page
            yield "", error_line(e)

    def generate(prompt, n, cfg_weight, steps, solver, seed, trajectory, progress=gr.Progress()):
        try:
            req = check_generation(prompt, n, cfg_weight, steps, solver, seed, trajectory, session.limits)
            progress(0.0, desc="compiling and sampling")

            def tick(done, total):
                progress((done, total), desc="sampling", unit="images")

            gallery, grid = session.generate(req, tick)
            if session.cfg.head.autoregressive:
                settings = (f"{req.n} image(s) of *{req.prompt}*: image tokens, CFG {req.cfg_weight:g}, seed "
                            f"{req.seed} (janusflow sample with these settings draws the same tokens)")
            else:
                settings = (f"{req.n} image(s) of *{req.prompt}*: CFG {req.cfg_weight:g}, {req.steps} {req.solver} "
                            f"steps, seed {req.seed} (janusflow sample with these settings starts from the same "
                            "noise)")
            return gallery, settings, grid, ""
        except Exception as e:  # noqa: BLE001 -- shown in the page
            return [], "", None, error_line(e)

    return ask, generate


def build(session: DemoSession) -> gr.Blocks:
    lim = session.limits
    ask, generate = make_handlers(session)
    with gr.Blocks(title="JanusFlow demo") as page:
        gr.Markdown(f"## JanusFlow\n`{session.name}`")
        with gr.Tab("Understanding", id="understanding"):
            if not session.can_understand:
                gr.Markdown("This checkpoint has no understanding encoder (und_encoder='none').")
            with gr.Row():
                with gr.Column():
                    upload = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="und-upload")
                    preview = gr.Image(label="Preview", interactive=False, height=256, elem_id="und-preview")
                with gr.Column():
                    question = gr.Textbox(label="Question", lines=2, elem_id="und-question")
                    with gr.Accordion("Decoding", open=False):
                        max_new = gr.Slider(1, lim.max_new_tokens, value=min(128, lim.max_new_tokens), step=1,
                                            label="Max new tokens")
                        temperature = gr.Slider(0.0, lim.max_temperature, value=0.0, step=0.05,
                                                label="Temperature (0 = greedy)")
                        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
                        und_seed = gr.Number(value=0, precision=0, label="Seed")
                    ask_btn = gr.Button("Ask", variant="primary", elem_id="und-ask")
                    answer = gr.Textbox(label="Answer", lines=6, interactive=False, elem_id="und-answer")
                    und_status = gr.Markdown(elem_id="und-status")
            upload.change(on_upload, [upload], [preview, und_status])
            ask_btn.click(ask, [upload, question, max_new, temperature, top_p, und_seed], [answer, und_status],
                          concurrency_limit=1, concurrency_id="model")
        with gr.Tab("Generation", id="generation"):
            if not session.can_generate:
                gr.Markdown("This checkpoint has no generation path (gen_enabled=False).")
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="Prompt", lines=2, elem_id="gen-prompt")
                    n = gr.Slider(1, lim.max_images, value=min(4, lim.max_images), step=1,
                                  label="Number of images")
                    cfg_weight = gr.Slider(0.0, lim.max_cfg_weight, value=session.default_cfg_weight, step=0.1,
                                           label="CFG weight (1 = no guidance)")
                    # a Janus-Pro checkpoint samples image tokens: no ODE steps, solver or trajectory
                    flow = not session.cfg.head.autoregressive
                    steps = gr.Slider(1, lim.max_steps, value=min(30, lim.max_steps), step=1, label="Steps",
                                      elem_id="gen-steps", visible=flow)
                    solver = gr.Radio(["euler", "heun"], value="euler", label="Solver", visible=flow)
                    gen_seed = gr.Number(value=0, precision=0, label="Seed")
                    trajectory = gr.Checkbox(value=False, label="Trajectory grid of image #0 (Euler)",
                                             visible=flow)
                    gen_btn = gr.Button("Generate", variant="primary", elem_id="gen-run")
                with gr.Column():
                    gallery = gr.Gallery(label="Samples", columns=4, height=360, elem_id="gen-gallery")
                    settings = gr.Markdown(elem_id="gen-settings")
                    grid = gr.Image(label="Trajectory of image #0: final samples on top, then per shown "
                                    "step z | x_hat", interactive=False, elem_id="gen-trajectory")
                    gen_status = gr.Markdown(elem_id="gen-status")
            gen_btn.click(generate, [prompt, n, cfg_weight, steps, solver, gen_seed, trajectory],
                          [gallery, settings, grid, gen_status], concurrency_limit=1, concurrency_id="model")
    page.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    return page


def serve(session: DemoSession, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Start the page on ``host:port``; returns the Blocks (running in the background when
    ``block`` is False)."""
    page = build(session)
    page.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD, ssr_mode=False,
                prevent_thread_lock=not block, show_error=False, quiet=False)
    return page
