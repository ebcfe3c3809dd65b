"""Fine-tune a trained JanusFlow on your own images: the paper's stage 3 (every part trained)
scaled to a small dataset.

  janusflow data build --images DIR --captions captions.jsonl --out data --name my_pets
  janusflow train --config janusflow:finetune:data=data,name=my_pets,init=CKPT --workdir runs/ft

Arg (comma-separated key=value): ``data`` the ``--out`` of ``janusflow data build`` (the TFDS
data root), ``name`` the dataset's name (or ``data`` alone: a prepared dataset directory),
``init`` an official Hugging Face directory (JanusFlow-1.3B), a janusflow model directory or
a training/run directory (its final model); optional ``steps`` (500), ``lr`` (2e-5, the paper's
stage-3 rate), ``batch`` (8 examples per step), ``task`` gen|und|both (gen), ``prompt_len``
(tokens of a generation prompt; default the model's context allows, at most the paper's 256),
``sample_every`` (steps between sample grids; default 5 grids per run, 0 = none).

Base data, only when named: ``base`` a TFDS name or prepared dataset directory (``base_data``
its data root, for a ``janusflow data build --out`` folder) mixed into every task stream the
run reads, ``base_share`` (0.2) of its rows over the run. Memory: ``optim`` adamw | adamw8bit
(8-bit block-wise moments) | adafactor; ``params`` float32 | bfloat16 (bf16 weights, fp32
optimizer math, stochastic rounding; default the checkpoint's); ``lora`` a rank (0: off; LoRA on
the LLM's attention and MLP, LLM and SigLIP frozen, layers unrolled so the merge fits); ``ema``
the EMA decay (0.99; 0 = no EMA copy of the weights). What fits one GPU (``janusflow plan`` rows: README,
experiments/finetune_memory.md): 80 GB ``params=bf16,optim=adamw8bit,ema=0``; 40 GB also
``optim=adafactor,ema=0`` (fp32 or ``params=bf16``); 24 GB ``lora=16,ema=0``.

The model config comes from ``init`` (so it matches the weights); the tokenizer too when the
checkpoint holds one. Grids of four of the dataset's own captions, from fixed noise, go to
``WORKDIR/samples/`` and TensorBoard every ``sample_every`` steps, starting before step 1.
A model whose VAE is pretrained (the 1.3B) needs ``--vae DIR`` (the SDXL-VAE).
"""

from __future__ import annotations

import dataclasses
import os

from janusflow.configs.data import DataConfig, SourceConfig
from janusflow.configs.errors import ConfigError
from janusflow.configs.schema import ExperimentConfig, LoraConfig, OptimConfig, TrainConfig

WHERE = "janusflow:finetune"
KEYS = ("data", "name", "init", "steps", "lr", "batch", "task", "prompt_len", "sample_every",
        "base", "base_data", "base_share", "optim", "params", "lora", "ema")
BASE_SHARE = 0.2
OPTIMIZERS = ("adamw", "adamw8bit", "adafactor")
PARAM_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}
# und:gen:text per task choice: stage 3's 21:70 between understanding and generation (paper
# Table 1), no text stream (the user's data holds none)
TASK_RATIOS = {"gen": (0, 1), "und": (1, 0), "both": (21, 70)}
PROMPT_LEN, UND_TEXT_LEN = 256, 1024     # the paper's (experiments/janusflow_1_3b.py)
SAMPLE_PROMPTS = 4


def parse_args(arg: str | None) -> dict:
    args = {}
    for kv in (arg or "").split(","):
        if not kv:
            continue
        k, eq, v = kv.partition("=")
        if not eq or k not in KEYS:
            raise ConfigError(f"{WHERE}: bad arg {kv!r}; expected key=value with key in {', '.join(KEYS)}")
        args[k] = v
    for need in ("data", "init"):
        if not args.get(need):
            raise ConfigError(f"{WHERE}: arg {need}=... is required ({__doc__.splitlines()[4].strip()})")
    return args


def _number(args, key, kind, default, minimum):
    raw = args.get(key)
    if raw is None:
        return default
    try:
        v = kind(raw)
    except ValueError:
        raise ConfigError(f"{WHERE}: {key}={raw!r} is not {'an int' if kind is int else 'a number'}") from None
    if not v >= minimum:
        raise ConfigError(f"{WHERE}: {key}={raw} must be >= {minimum}")
    return v


def source(args) -> SourceConfig:
    if args.get("name"):
        return SourceConfig(name=args["name"], data_dir=args["data"])
    return SourceConfig(name=args["data"])    # a prepared dataset directory


def sample_captions(src: SourceConfig, n: int = SAMPLE_PROMPTS) -> tuple:
    """The first ``n`` distinct captions of the dataset (what the grids prompt with); the data
    check reports a dataset that cannot be opened, so none here."""
    from janusflow.data.sources import as_text_list, get_field, open_source
    try:
        ds = open_source(src, src.image)
    except (FileNotFoundError, ValueError, KeyError):
        return ()
    out = []
    for i in range(min(len(ds), 64)):
        try:
            caps = [c.strip() for c in as_text_list(get_field(ds[i], src.caption)) if c.strip()]
        except KeyError:
            return ()
        if caps and caps[0] not in out:
            out.append(caps[0])
        if len(out) == n:
            break
    return tuple(out)


def get_config(arg=None) -> ExperimentConfig:
    from janusflow.checkpoint.model_io import load_config, resolve_checkpoint
    args = parse_args(arg)
    init = resolve_checkpoint(args["init"], log=print)
    model = load_config(init)
    task = args.get("task", "gen")
    if task not in TASK_RATIOS:
        raise ConfigError(f"{WHERE}: task={task!r}; expected gen, und or both")
    steps = _number(args, "steps", int, 500, 1)
    lr = _number(args, "lr", float, 2e-5, 1e-12)
    batch = _number(args, "batch", int, 8, 1)
    seq_len = min(4096, model.llm.max_position_embeddings)
    prompt_len = _number(args, "prompt_len", int,
                         min(PROMPT_LEN, model.llm.max_position_embeddings - 1 - model.num_gen_tokens), 1)
    und_text_len = max(1, min(UND_TEXT_LEN, seq_len - 2 - model.num_und_tokens))
    und, gen = TASK_RATIOS[task]
    und_batch = round(batch * und / (und + gen))
    if task == "both":
        und_batch = min(max(und_batch, 1), batch - 1)
    src = source(args)
    base = SourceConfig(name=args["base"], data_dir=args.get("base_data", "")) if args.get("base") else SourceConfig()
    if args.get("base_share") and not base.enabled:
        raise ConfigError(f"{WHERE}: base_share={args['base_share']} names no base data (add base=DIR_OR_NAME)")
    share = _number(args, "base_share", float, BASE_SHARE, 1e-6) if base.enabled else 0.0
    if share >= 1:
        raise ConfigError(f"{WHERE}: base_share={share} must be < 1 (the rest is your data)")
    optim_name = args.get("optim", "adamw")
    if optim_name not in OPTIMIZERS:
        raise ConfigError(f"{WHERE}: optim={optim_name!r}; expected one of {', '.join(OPTIMIZERS)}")
    if args.get("params", "float32") not in PARAM_DTYPES:
        raise ConfigError(f"{WHERE}: params={args['params']!r}; expected float32 or bfloat16")
    if "params" in args:      # otherwise the checkpoint's own
        model = dataclasses.replace(model, param_dtype=PARAM_DTYPES[args["params"]])
    lora = _number(args, "lora", int, 0, 0)
    if lora:
        # LoRA merges W + A @ B before the model runs: with scanned layers the merged stacks and
        # their whole-stack cotangents are live at once (1.3B on 24 GB: 24.36 GiB scanned, 10.00
        # unrolled, README "Fine-tune on your own images"); per layer, XLA merges and reduces in turn
        model = dataclasses.replace(model, scan_layers=False)
    ema = _number(args, "ema", float, 0.99, 0.0)
    if ema >= 1:
        raise ConfigError(f"{WHERE}: ema={ema} must be < 1 (0 = no EMA)")
    prompts = sample_captions(src) if gen else ()
    every = _number(args, "sample_every", int, max(steps // 5, 1) if prompts else 0, 0)
    # the paper's stage-3 warm-up (1000 of 26k steps) scaled to the run's length
    optim = OptimConfig(name=optim_name, lr=lr, warmup_steps=min(1000, steps // 10), b1=0.9, b2=0.95, weight_decay=0.0,
                        grad_clip=1.0, ema_decay=ema)
    train = TrainConfig(stage=3, steps=steps, und_batch=und_batch, gen_batch=batch - und_batch, text_batch=0,
                        optim=optim, lora=LoraConfig(rank=lora), init_from=init, log_every=max(1, min(10, steps // 10)),
                        ckpt_every=max(1, min(500, steps // 2)), keep_checkpoints=2,
                        sample_every=every if prompts else 0, sample_prompts=prompts)
    tokenizer = init if os.path.isfile(os.path.join(init, "tokenizer.json")) else ""
    data = DataConfig(und=src if und else SourceConfig(), gen=src if gen else SourceConfig(),
                      text=SourceConfig(), base=base, base_share=share, tokenizer=tokenizer, prompt_len=prompt_len,
                      und_text_len=und_text_len)
    return ExperimentConfig(name=f"finetune_{args.get('name') or os.path.basename(args['data'].rstrip('/'))}",
                            model=model, seq_len=seq_len, train=train, data=data)
