"""The default run: a miniature of the whole JanusFlow recipe on the built-in shapes dataset.

  1. siglip   pre-train the tiny understanding encoder (SigLIP sigmoid loss on captions), so
              REPA and understanding have a meaningful encoder, as JanusFlow starts from one;
  2. llm      pre-train the tiny LLM on the dataset's text (JanusFlow starts from DeepSeek-LLM);
  3-5. stage1/stage2/stage3 of paper Table 1 (trainable parts, data ratios, learning rates);
  6. eval     shapes benchmark (GenEval rules, analytic detector) of the final EMA model and of
              the untrained model, understanding accuracy, what the SigLIP encoder knows
              (shape/colour probes against a random tower), sample grids, learning curves.
Each phase lives in ``workdir/<phase>`` and is skipped when its final model exists, so the
recipe resumes where it stopped (a phase itself resumes from its checkpoints). A phase that
ends without its final model (SIGTERM/SIGINT: it saved a checkpoint and returned) stops the
recipe there with :class:`PhaseStopped`, not the next phase with a missing model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable

import jax
import numpy as np
from flax import nnx

from janusflow import paths
from janusflow.configs.schema import RECIPE_PHASES as PHASES
from janusflow.configs.schema import SIGLIP_PRETRAIN_FILE, VQ_PRETRAIN_FILE
from janusflow.configs.schema import ConfigError, ExperimentConfig, OptimConfig
from janusflow.configs.variants import RECTIFIED_FLOW
from janusflow.data.mixing import with_task_ratios
from janusflow.train import loop
from janusflow.train import workdir as workdir_lib


class PhaseStopped(RuntimeError):
    """A phase returned without its final model (a signal made it checkpoint and stop); the
    same command resumes the recipe from that checkpoint."""


def phase_finished(pcfg: ExperimentConfig, pdir: str) -> bool:
    """Every final model of the phase complete (its config is written last), so a folder left
    half-written by a kill during the save is not taken for a finished phase."""
    from janusflow.checkpoint.model_io import is_model_dir
    return all(is_model_dir(os.path.join(pdir, name)) for name in loop.final_model_names(pcfg))


def phases(recipe) -> tuple:
    """The run's training phases in order: the paper's, with the curriculum before stage 2."""
    cur = tuple(p.name for p in recipe.curriculum)
    return PHASES[:2] + cur + PHASES[2:]


def _phase_cfg(cfg: ExperimentConfig, phase: str, init_from: str) -> ExperimentConfig:
    r = cfg.recipe
    cur = {p.name: p for p in r.curriculum}
    if phase == "llm":
        steps, lr, stage, ratios = r.text_steps, r.text_lr, 2, (0, 0, 1)
    elif phase in cur:
        p = cur[phase]
        steps, lr, stage, ratios = p.steps, p.lr, 2, p.ratios
        if p.gen is not None:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, gen=p.gen))
    else:
        k = int(phase[-1]) - 1
        steps, lr, stage = r.stage_steps[k], r.stage_lrs[k], k + 1
        ratios = tuple(r.stage_ratios[3 * k:3 * k + 3])
    optim = dataclasses.replace(cfg.train.optim, lr=lr, warmup_steps=min(cfg.train.optim.warmup_steps, steps // 5))
    train = dataclasses.replace(cfg.train, stage=stage, steps=steps, optim=optim, init_from=init_from)
    out = dataclasses.replace(cfg, name=f"{cfg.name}/{phase}", train=train)
    return with_task_ratios(out, ratios, r.batch)


def siglip_data_cfg(cfg: ExperimentConfig) -> ExperimentConfig:
    """The data view of SigLIP pre-training: caption + image pairs (+ SigLIP pixels) of the
    generation stream, which the pipeline only produces for a model with generation and REPA
    -- not so for the ablations without them (A, D), whose SigLIP is pre-trained all the same."""
    # the JanusFlow family's view of the model: its pipeline emits the REPA pixels (Janus-Pro has no REPA)
    view = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, gen_head=RECTIFIED_FLOW.name, gen_enabled=True,
                                                              und_encoder="siglip", repa=True))
    return with_task_ratios(view, (0, 1, 0), cfg.recipe.siglip_batch or cfg.recipe.batch)


def _save_init(cfg: ExperimentConfig, siglip_params: dict, out: str, log, vq_params: dict | None = None):
    """A fresh model whose SigLIP tower (and Janus-Pro's VQ tokenizer) holds the pre-trained weights."""
    from janusflow.checkpoint.model_io import save_model
    from janusflow.models.build import build_model
    model = nnx.jit(lambda: build_model(cfg.model, seed=cfg.train.seed))()
    if vq_params is not None:
        state = nnx.state(model.gen_vision, nnx.Param)
        nnx.replace_by_pure_dict(state, vq_params)
        nnx.update(model.gen_vision, state)
        log("the initial model's VQ tokenizer is the one trained in phase vq")
    if siglip_params is None:   # a model without SigLIP: nothing was pre-trained
        save_model(out, model, cfg.model, loop.run_tokenizer(cfg))
        log(f"saved the initial model to {out}")
        return
    state = nnx.state(model.und_encoder, nnx.Param)
    nnx.replace_by_pure_dict(state, siglip_params)
    nnx.update(model.und_encoder, state)
    save_model(out, model, cfg.model, loop.run_tokenizer(cfg))
    log(f"saved the initial model with the pre-trained SigLIP to {out}")


def _learning_curves(workdir: str, out_png: str, run_phases=PHASES):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    offset = 0
    for phase in run_phases:
        path = os.path.join(workdir, phase, "metrics.jsonl")
        if not os.path.exists(path):
            continue
        rows = [json.loads(line) for line in open(path)]
        steps = [offset + r["step"] for r in rows]
        # the middle panel is the generation loss: velocity MSE (JanusFlow) or image-token CE (Janus-Pro)
        for ax, keys in zip(axes, (("loss_ar",), ("loss_rf", "loss_img"), ("loss_repa",))):
            for key in keys:
                vals = [r.get(key) for r in rows]
                if any(v for v in vals):
                    ax.plot(steps, vals, label=phase)
        offset = steps[-1] if steps else offset
    for ax, title in zip(axes, ("AR (next-token)", "generation: RF velocity MSE | image-token CE", "REPA (-cos)")):
        ax.set_title(title)
        ax.set_xlabel("step (phases concatenated)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)


def _trajectory_steps(steps: int) -> tuple:
    """Steps shown in the trajectory grid: t = 0, 1/30, 0.1, 0.2, 0.3, 0.5, 0.8 on 30 steps."""
    return tuple(sorted({min(steps - 1, round(f * steps)) for f in (0, 1 / 30, 0.1, 0.2, 0.3, 0.5, 0.8)}))


def evaluate(cfg: ExperimentConfig, model_dir: str, outdir: str, log, denoise_png: str | None = None) -> dict:
    from janusflow.checkpoint.model_io import load_model
    from janusflow.data.pipeline import load_tokenizer
    from janusflow.shapes import bench as shapes_bench
    from janusflow.eval.geneval import model_generate_fn
    from janusflow.models.build import build_vae
    r = cfg.recipe
    model, mcfg = load_model(model_dir)
    tok = load_tokenizer(cfg.data, mcfg)
    vae = build_vae(mcfg.vae)
    out = {}
    if mcfg.uses_siglip:   # what REPA's target and the understanding path can see at all
        from janusflow.shapes import encoder_probe
        out["encoder_probe"] = encoder_probe.encoder_probe(model.und_encoder, mcfg.siglip)
        log("understanding encoder (SigLIP) probe: " + encoder_probe.summary(out["encoder_probe"]))
    if mcfg.gen_enabled:   # not for the understanding-only ablation (D)
        fn = model_generate_fn(model, vae, mcfg, tok, cfg_weight=r.cfg_weight, steps=r.sample_steps)
        # the same prompts for every run; the sampling noise follows the run's seed (train.seed
        # is 0 unless a seeded sweep sets it), so seeds of a sweep differ in their draws here too
        out["shapes_bench"] = shapes_bench.run_shapes_bench(fn, r.eval_prompts_per_tag, r.eval_images, seed=0,
                                                            outdir=outdir, batch_size=64,
                                                            sample_seed=cfg.train.seed)
        log(shapes_bench.format_one_object(out["shapes_bench"]["one_object"]))
    if mcfg.gen_enabled and not mcfg.generates_image_tokens:   # the RF-loss probes (JanusFlow)
        # does the generator read its prompt at all? (smooth where the benchmark is coarse)
        from janusflow.shapes import conditioning
        out["conditioning"] = conditioning.conditioning_gap(
            model, vae, dataclasses.replace(cfg, model=mcfg), n=64)
        log("conditioning gap (RF loss, shuffled - correct prompts): " + conditioning.summary(out["conditioning"]))
        out["shape_gap"] = conditioning.shape_gap(model, vae, dataclasses.replace(cfg, model=mcfg), tok)
        log("shape gap (RF loss, shape word swapped - correct, one-object scenes): "
            + conditioning.summary(out["shape_gap"]))
        if denoise_png:   # what the model draws from real noised images, beside its samples
            from janusflow.shapes import denoise
            out["denoise"] = denoise.denoise_report(model, vae, dataclasses.replace(cfg, model=mcfg), out_png=denoise_png)
            log(denoise.summary(out["denoise"]))
            # ... and what it draws from noise: the sampler's path, x_hat at chosen steps
            denoise.trajectory_report(model, vae, mcfg, tok, denoise.SHAPES_PROMPTS, steps=r.sample_steps,
                                      cfg_weight=r.cfg_weight, show=_trajectory_steps(r.sample_steps),
                                      out_png=os.path.join(os.path.dirname(denoise_png), "trajectory.png"))
    if mcfg.und.understands:   # not for the generation-only ablation (E)
        try:
            from janusflow.eval.understanding import model_answer_fn, understanding_accuracy
            # The gen-encoder ablations (B, C) see images through the VAE.
            # asked with the system prompt the model was trained with
            fn = model_answer_fn(model, mcfg, tok, vae=vae if mcfg.und.reads_latents else None,
                                 system_prompt=cfg.data.system_prompt)
            out["understanding"] = understanding_accuracy(fn, r.eval_questions, seed=0)
        except Exception as e:  # reported, not fatal: one broken evaluation must not lose the other
            out["understanding_error"] = f"{type(e).__name__}: {e}"
    return out


def run(cfg: ExperimentConfig, workdir: str, *, log: Callable = print, start_over: bool = False) -> dict:
    """The whole recipe in ``workdir`` (held by this run: a second one is refused); each phase
    is a ``loop.train`` in its own sub-directory (``start_over`` is passed to them)."""
    if not paths.is_local(workdir):
        # the phases themselves could train into a bucket (loop.train), but the evaluation
        # writes image grids and the learning curves with local file APIs
        raise ConfigError(f"--workdir {workdir!r}: the default recipe run needs a local workdir; "
                          "cloud workdirs are for single-phase runs (recipe.enabled=false)")
    # before SigLIP pre-training touches jax; loop.train's own call is then a no-op
    loop.init_distributed()
    with workdir_lib.hold(workdir, jax.process_index() == 0, log=log):
        return _run(cfg, workdir, log, start_over)


def _train_vq(cfg: ExperimentConfig, workdir: str, log: Callable) -> dict:
    """Phase vq (Janus-Pro): the VQ tokenizer trained on the generation stream's images; its
    losses and codebook usage go to workdir/vq_pretrain.json."""
    from janusflow.data.pipeline import make_pipeline
    from janusflow.train.vq_pretrain import pretrain_vq
    r = cfg.recipe
    log(f"== phase vq: {r.vq_steps} steps of VQ tokenizer training (reconstruction + codebook + commitment)")
    batches = make_pipeline(with_task_ratios(cfg, (0, 1, 0), r.vq_batch or r.batch), cfg.data)
    res = pretrain_vq(cfg.model.vq, batches, r.vq_steps, lr=r.vq_lr, seed=cfg.train.seed, log=log)
    batches.close() if hasattr(batches, "close") else None
    log(f"vq: {res['codes_used']} of {res['codebook_size']} codes used over the last tenth of the steps")
    with open(os.path.join(workdir, VQ_PRETRAIN_FILE), "w") as f:
        json.dump({k: res[k] for k in ("first", "last", "codes_used", "codebook_size")}, f, indent=2)
    return res["params"]


def _run(cfg: ExperimentConfig, workdir: str, log: Callable, start_over: bool) -> dict:
    from janusflow.data.pipeline import make_pipeline
    from janusflow.train.siglip_pretrain import pretrain_siglip
    r = cfg.recipe
    t_start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    init_dir = os.path.join(workdir, "init")
    if not os.path.isdir(init_dir) and not cfg.model.uses_siglip:
        _save_init(cfg, None, init_dir, log)
    vq_params = None
    if not os.path.isdir(init_dir) and cfg.model.generates_image_tokens:
        vq_params = _train_vq(cfg, workdir, log)
    if not os.path.isdir(init_dir):
        log(f"== phase siglip: {r.siglip_steps} steps of sigmoid-loss pre-training")
        pcfg = siglip_data_cfg(cfg)
        batches = make_pipeline(pcfg, cfg.data)
        res = pretrain_siglip(cfg.model.siglip, cfg.model.llm.vocab_size, batches, r.siglip_steps,
                              lr=r.siglip_lr, seed=cfg.train.seed, log=log, scan=cfg.model.scan_layers)
        batches.close() if hasattr(batches, "close") else None
        with open(os.path.join(workdir, SIGLIP_PRETRAIN_FILE), "w") as f:
            json.dump({"first_loss": res["first_loss"], "last_loss": res["last_loss"]}, f)
        _save_init(cfg, res["params"], init_dir, log, vq_params)
    prev = init_dir
    curve, gen_seen = None, 0
    if r.curve_every:
        from janusflow.train.curve import ShapesCurve
        curve = ShapesCurve(cfg, workdir, loop.run_tokenizer(cfg), log=log)
    for phase in phases(r):
        pdir = os.path.join(workdir, phase)
        pcfg = _phase_cfg(cfg, phase, prev)
        b = pcfg.train
        if not phase_finished(pcfg, pdir):
            log(f"== phase {phase}: stage {b.stage}, {b.steps} steps, batch und/gen/text "
                f"{b.und_batch}/{b.gen_batch}/{b.text_batch}, lr {b.optim.lr}"
                + (f", generation data {pcfg.data.gen.name}" if pcfg.data.gen != cfg.data.gen else ""))
            probe = None
            if curve is not None and phase not in PHASES[:2]:   # the phases that train generation
                probe = (r.curve_every, curve.probe(phase, gen_seen, b.gen_batch))
            loop.train(pcfg, pdir, log=log, start_over=start_over, probe=probe)
            if not phase_finished(pcfg, pdir):
                raise PhaseStopped(f"the recipe stopped in phase {phase}, which ended without its final model "
                                   f"({pdir}/model); the same command resumes it from its last checkpoint")
        gen_seen += b.steps * b.gen_batch
        prev = pdir
    results = {"train_minutes": (time.perf_counter() - t_start) / 60}
    log("== eval: shapes benchmark and understanding accuracy of the final EMA model"
        + (" and of the untrained model" if r.eval_untrained else ""))
    final = os.path.join(workdir, "stage3", "model_ema")
    results["final"] = evaluate(cfg, final, os.path.join(workdir, "eval_final"), log,
                                denoise_png=os.path.join(workdir, "eval_final", "denoise.png"))
    if r.eval_untrained:
        results["untrained"] = evaluate(cfg, init_dir, os.path.join(workdir, "eval_untrained"), log)
    _learning_curves(workdir, os.path.join(workdir, "learning_curves.png"), phases(r))
    results["total_minutes"] = (time.perf_counter() - t_start) / 60
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    rows = [(name, results[key]) for name, key in (("final EMA model", "final"), ("untrained model", "untrained"))
            if key in results]
    if "shapes_bench" in results["final"]:
        tags = results["final"]["shapes_bench"]["per_tag"]
        log("shapes benchmark (GenEval rules)   " + "  ".join(tags) + "  overall")
        for name, res in rows:
            s = res["shapes_bench"]
            log(f"{name:34s} " + "  ".join(f"{v:.2f}" for v in s["per_tag"].values()) + f"  {s['overall']:.3f}")
    if "understanding" in results["final"]:
        log("understanding accuracy (shapes validation): " + ", ".join(
            f"{name.split()[0]} {res['understanding']['overall']:.3f}" for name, res in rows if "understanding" in res)
            + f"; without looking at the image (best constant answers) "
              f"{results['final']['understanding']['baseline']['overall']:.3f}")
    log(f"wrote {workdir}/results.json, learning_curves.png, eval_final/grid_*.png, denoise.png and trajectory.png "
        f"({results['total_minutes']:.1f} min in all)")
    return results
