"""Understanding accuracy on the shapes world: short questions, exact-match answers.

Scenes come from the shapes *validation* split (one per GenEval category in turn), each with
the questions of :func:`janusflow.shapes.world.questions` (qtypes ``color``, ``count``,
``shape``, ``position``). An answer is correct when it equals the reference after
:func:`normalize` (lower case, surrounding space and final period dropped, number words 0-10
as digits), so "Red." and "red" match but "it is red" does not.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

import numpy as np

from janusflow.shapes import world as shapes

QTYPES = ("color", "count", "shape", "position")
_WORDS = {w: str(i) for i, w in enumerate(shapes.NUMBERS)}


def normalize(answer: str) -> str:
    a = re.sub(r"\s+", " ", str(answer).strip().lower()).rstrip(".!").strip()
    return _WORDS.get(a, a)


def validation_questions(n: int, seed: int = 0, size: int = 32) -> list:
    """``[(image uint8 (size, size, 3), question, answer, qtype)]`` over ``n`` scenes."""
    if n < 1:
        raise ValueError(f"n (number of scenes) must be >= 1, got {n}")
    rng = np.random.default_rng([seed, 0x51A7E5])
    out = []
    for j in range(n):
        objs, _ = shapes.sample_scene(rng, size, shapes.TAGS[j % len(shapes.TAGS)], "val")
        img = shapes.render(objs, size)
        out += [(img, q, a, t) for q, a, t in shapes.questions(objs, rng)]
    return out


def understanding_accuracy(answer_fn: Callable, n: int = 100, seed: int = 0, *, size: int = 32,
                           batch_size: int = 64, data: Optional[list] = None) -> dict:
    """Exact-match accuracy of ``answer_fn(images (B, H, W, 3) uint8, questions) -> answers``.

    ``n`` scenes (about 3-4 questions each). Returns ``{"per_qtype", "counts" (correct, total),
    "overall" (unweighted mean over qtypes, as GenEval averages tags), "micro" (over all
    questions), "n_questions"}``.
    """
    data = data if data is not None else validation_questions(n, seed, size)
    counts = {t: [0, 0] for t in QTYPES}
    for s in range(0, len(data), batch_size):
        chunk = data[s:s + batch_size]
        answers = list(answer_fn(np.stack([d[0] for d in chunk]), [d[1] for d in chunk]))
        if len(answers) != len(chunk):
            raise ValueError(f"answer_fn returned {len(answers)} answers for {len(chunk)} questions")
        for (_, _, ref, t), got in zip(chunk, answers):
            counts[t][0] += normalize(got) == normalize(ref)
            counts[t][1] += 1
    per = {t: c / n_ for t, (c, n_) in counts.items() if n_}
    total = sum(n_ for _, n_ in counts.values())
    return {"per_qtype": per, "counts": {t: tuple(c) for t, c in counts.items()},
            "overall": float(np.mean(list(per.values()))) if per else 0.0,
            "micro": sum(c for c, _ in counts.values()) / total if total else 0.0,
            "n_questions": total, "baseline": majority_baseline(data)}


def majority_baseline(data: list) -> dict:
    """The score of the best *constant* answer per question type (e.g. always "1" for counts):
    what a model earns from the answer prior alone, without looking at the image. An accuracy
    at or below ``overall`` here means the image is not being used. Returns ``{"per_qtype":
    {qtype: (answer, accuracy)}, "overall"}`` (unweighted over qtypes, like ``overall``)."""
    per = {}
    for t in QTYPES:
        refs = [normalize(d[2]) for d in data if d[3] == t]
        if refs:
            answer = max(sorted(set(refs)), key=refs.count)
            per[t] = (answer, refs.count(answer) / len(refs))
    return {"per_qtype": per, "overall": float(np.mean([a for _, a in per.values()])) if per else 0.0}


def oracle_answer_fn(data: list) -> Callable:
    """Answers from the ground truth (for tests): looks questions up by (image bytes, text)."""
    table = {(d[0].tobytes(), d[1]): d[2] for d in data}

    def fn(images, questions):
        return [table[(np.asarray(im).tobytes(), q)] for im, q in zip(images, questions)]
    return fn


def model_answer_fn(model, cfg, tokenizer, *, max_new_tokens: int = 8, **kwargs) -> Callable:
    """Greedy answers from :func:`janusflow.sample.chat.answer`."""
    from janusflow.sample.chat import answer

    def fn(images, questions):
        return answer(model, cfg, tokenizer, images, list(questions),
                      max_new_tokens=max_new_tokens, **kwargs)
    return fn
