"""Examples and tokens per step against the paper's (Table 1: 512 sequences of 4096 tokens per
step in stages 1-2, 256 in stage 3).

The paper packs examples into 4096-token sequences, so its batch of 512 counts sequences, not
examples. Our rows are padded, not packed (one example per row, ``data/pipeline.py``): a row
costs its padded length whatever the example's own length. We match the paper's *tokens* per
step: the global rows per step are chosen so that the padded tokens of one step,
``sum_task rows_task x row_len_task``, are at most ``paper_batch x 4096``, with the task ratios
und:gen:text counted in examples. Steps are the paper's, so the tokens seen over each stage
match too. The examples per step then equal the paper's when the examples fill their rows
(the paper's packed sequence of 4096 tokens holds 4096 / mean length examples); shorter
examples leave padding, and ``janusflow data lengths`` measures how much on a dataset.
"""

from __future__ import annotations

from janusflow.data.mixing import TASKS, task_batches_at

PAPER_SEQ_LEN = 4096
PAPER_BATCH = {1: 512, 2: 512, 3: 256}           # sequences per step, paper Table 1
PAPER_STEPS = {1: 10_000, 2: 390_000, 3: 26_000}


def row_tokens(cfg) -> dict:
    """Padded tokens of one row per task: und ``2 + num_und_tokens + und_text_len`` (capped at
    seq_len), gen ``prompt_len + 1 + num_gen_tokens`` (the t_emb slot and the image), text
    ``text_len``."""
    from janusflow.data.pipeline import und_row_len
    m, d = cfg.model, cfg.data
    return {"und": und_row_len(cfg), "gen": d.prompt_len + 1 + m.num_gen_tokens, "text": d.text_len}


def paper_rows(cfg, ratios, paper_batch: int, multiple_of: int = 256) -> int:
    """Global rows per step whose padded tokens match ``paper_batch`` packed sequences of 4096
    (rounded down to a multiple of ``multiple_of``, so they split over common meshes)."""
    r = [float(x) for x in ratios]
    lens = row_tokens(cfg)
    mean_len = sum(x * lens[t] for x, t in zip(r, TASKS)) / sum(r)
    rows = int(paper_batch * PAPER_SEQ_LEN / mean_len) // multiple_of * multiple_of
    if rows < multiple_of:
        raise ValueError(f"{paper_batch} sequences of {PAPER_SEQ_LEN} tokens hold fewer than "
                         f"{multiple_of} rows of {mean_len:.0f} tokens")
    return rows


def step_budget(cfg, step: int = None) -> dict:
    """Rows and padded tokens per step (at ``step``, default the main phase) beside the paper's
    tokens per step for this stage."""
    t = cfg.train
    sizes = task_batches_at(t, t.steps if step is None else step)
    lens = row_tokens(cfg)
    tokens = {k: sizes[k] * lens[k] for k in TASKS}
    paper = PAPER_BATCH.get(t.stage, 0) * PAPER_SEQ_LEN
    return {"rows": sizes, "examples": sum(sizes.values()), "row_tokens": lens, "tokens": sum(tokens.values()),
            "task_tokens": tokens, "paper_tokens": paper, "paper_sequences": PAPER_BATCH.get(t.stage, 0)}


def format_budget(cfg) -> list:
    """Report lines: per phase of the run, examples and tokens per step and over the phase,
    against the paper's."""
    from janusflow.data.mixing import batch_phases
    t = cfg.train
    lines = []
    total_ex = total_tok = 0
    for start, end, _ in batch_phases(t):
        b = step_budget(cfg, start)
        n = end - start
        total_ex += n * b["examples"]
        total_tok += n * b["tokens"]
        rows = ", ".join(f"{k} {b['rows'][k]} x {b['row_tokens'][k]}" for k in TASKS if b["rows"][k])
        ratio = f" = {b['tokens'] / b['paper_tokens']:.2f} x the paper's {b['paper_sequences']} x {PAPER_SEQ_LEN}" \
            if b["paper_tokens"] else ""
        lines.append(f"    steps {start:,}-{end:,}: {b['examples']:,} examples/step ({rows} tokens); "
                     f"{b['tokens']:,} padded tokens/step{ratio}")
    paper_steps = PAPER_STEPS.get(t.stage)
    paper_total = PAPER_BATCH.get(t.stage, 0) * PAPER_SEQ_LEN * (paper_steps or 0)
    vs = f" (paper: {paper_steps:,} steps, {paper_total / 1e9:.2f}G tokens)" if paper_steps else ""
    lines.append(f"    whole run: {t.steps:,} steps, {total_ex / 1e6:.2f}M examples, "
                 f"{total_tok / 1e9:.2f}G padded tokens{vs}")
    return lines
