"""What each length cut costs on a dataset: token lengths of the understanding conversations,
generation prompts and text documents as the pipeline builds them (templates, system prompt,
every turn), and for each candidate cut the share of examples kept whole, cut to their whole
turns, truncated, or dropped (``janusflow data lengths``).

The rules are the pipeline's (``data/pipeline.py``): an understanding row keeps the turns that
end within it, truncates a first answer that starts but does not end within it, and drops the
example when not one answer token fits; a generation prompt longer than ``prompt_len`` is cut
(dropped only when the template alone does not fit); a text document is truncated. Images are
not decoded: only the text decides the lengths (the image block is a fixed 1 + N slots).
"""

from __future__ import annotations

import numpy as np

from janusflow.data.sources import as_text, as_text_list, get_field, open_source
from janusflow.data.tokenizer import conversation_example, generation_prompt_ids

# candidate cuts, in the config's own units (und_text_len, prompt_len, text_len)
DEFAULT_CUTS = {"und": (64, 128, 256, 512, 1024, 2048, 3518), "gen": (32, 64, 128, 256, 512),
                "text": (128, 512, 1024, 2048, 4096)}
OUTCOMES = ("whole", "turns_dropped", "truncated", "dropped")


def und_lengths(tok, record, keys, num_image_tokens: int, system_prompt: str, max_turns: int = 0, *,
                roles: tuple):
    """(text tokens of the whole conversation, text tokens to the end of the first answer, text
    tokens before the first answer token), or None for an example the pipeline skips as
    empty. Text tokens = row tokens minus the 1 + N image slots. ``max_turns`` > 0: the first
    that many turns (the pipeline picks that many at random)."""
    turns = [(q, a) for q, a in zip(as_text_list(get_field(record, keys.question)),
                                    as_text_list(get_field(record, keys.answer))) if a.strip()]
    turns = turns[:max_turns] if max_turns else turns
    if not turns:
        return None
    ids, _, loss = conversation_example(tok, turns, num_image_tokens, system_prompt, roles=roles)
    m = np.asarray(loss, bool)
    first_end = int(np.flatnonzero(m & ~np.append(m[1:], False))[0]) + 1
    slots = 1 + num_image_tokens
    return len(ids) - slots, first_end - slots, int(np.argmax(m)) - slots


def und_outcome(lengths, cut: int) -> str:
    total, first_end, first_start = lengths
    if total <= cut:
        return "whole"
    if first_end <= cut:
        return "turns_dropped"
    return "truncated" if first_start < cut else "dropped"


def measure(cfg, n: int = 1000, split: str | None = None, tokenizer=None) -> dict:
    """Lengths of the first ``n`` examples of each task source the experiment reads (the
    und/gen/text sources of ``cfg.data``; text only when some phase has text rows)."""
    import dataclasses

    from janusflow.data.mixing import batch_phases
    from janusflow.data.pipeline import load_tokenizer
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    d, m = cfg.data, cfg.model
    tok = tokenizer or load_tokenizer(d, m)
    tasks = [t for t in ("und", "gen", "text")
             if any(sizes[t] for _, _, sizes in batch_phases(cfg.train))]
    out = {}
    for task in tasks:
        src_cfg = getattr(d, task)
        if split:
            src_cfg = dataclasses.replace(src_cfg, split=split)
        try:
            source = open_source(src_cfg, src_cfg.image if task != "text" else None)
        except Exception as e:  # noqa: BLE001 - TFDS raises many kinds, some over many lines
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"data.{task}.name={src_cfg.name!r}: {first}") from None
        lens, empty = [], 0
        for i in range(min(n, len(source))):
            rec = source[i]
            if task == "und":
                got = und_lengths(tok, rec, src_cfg, m.num_und_tokens, d.system_prompt, d.max_turns,
                                  roles=m.head.roles)
            elif task == "gen":   # the longest of the caption fields (the worst case per example)
                caps = [c.strip() for p in src_cfg.caption.split("|") for c in as_text_list(get_field(rec, p))]
                got = max((len(generation_prompt_ids(tok, c, m.head)) for c in caps if c), default=None)
            else:
                text = as_text(get_field(rec, src_cfg.text)).strip()
                got = len(tok.encode(text)) + 1 if text else None     # + <eos>
            if got is None:
                empty += 1
            else:
                lens.append(got)
        out[task] = {"source": f"{src_cfg.name} ({src_cfg.split})", "lengths": lens, "empty": empty}
    return out


def cut_table(task: str, lengths: list, cut: int) -> dict:
    """Share of examples per outcome at ``cut`` (the config's unit for the task)."""
    if task == "und":
        got = [und_outcome(x, cut) for x in lengths]
    else:                    # prompts and documents are cut, not dropped
        got = ["whole" if x <= cut else "truncated" for x in lengths]
    n = max(len(got), 1)
    return {k: got.count(k) / n for k in OUTCOMES}


def report(cfg, measured: dict, cuts: dict | None = None) -> dict:
    """Per task: length statistics and the outcome shares at each cut (the config's own cut
    always included)."""
    own = {"und": cfg.data.und_text_len, "gen": cfg.data.prompt_len, "text": cfg.data.text_len}
    cuts = cuts or DEFAULT_CUTS
    out = {}
    for task, r in measured.items():
        full = [x[0] if task == "und" else x for x in r["lengths"]]
        stats = ({"mean": float(np.mean(full))} | {f"p{q}": float(np.percentile(full, q)) for q in (50, 90, 99)}
                 | {"max": float(np.max(full))}) if full else {}
        table = {c: cut_table(task, r["lengths"], c) for c in sorted(set(cuts.get(task, ())) | {own[task]})}
        out[task] = {"source": r["source"], "n": len(full), "empty": r["empty"], "stats": stats,
                     "own_cut": own[task], "cuts": table}
    return out


def format_report(rep: dict) -> str:
    unit = {"und": "und_text_len (text tokens of a row: system prompt, questions, answers)",
            "gen": "prompt_len (BOS User: {caption}\\n\\nAssistant:, Janus-Pro's + <begin_of_image>)",
            "text": "text_len (document + <eos>)"}
    lines = []
    for task, r in rep.items():
        s = r["stats"]
        lines.append(f"{task}: {r['n']} examples of {r['source']}" + (f", {r['empty']} empty (skipped)" if r["empty"] else ""))
        if s:
            lines.append("  tokens: " + ", ".join(f"{k} {v:.0f}" for k, v in s.items()))
        lines.append(f"  cut on {unit[task]}:")
        for c, shares in r["cuts"].items():
            mark = "  <- this config" if c == r["own_cut"] else ""
            lines.append(f"    {c:>6}: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in shares.items()
                                                    if v or k == "whole") + mark)
    return "\n".join(lines)
