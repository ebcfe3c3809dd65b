"""GenEval's scoring rules and aggregation, in pure Python/NumPy.

Re-implemented from the rules of the public GenEval evaluator (djghosh13/geneval,
``evaluation/evaluate_images.py`` and ``summary_scores.py``); the detector and the colour
classifier are pluggable (:mod:`janusflow.eval.geneval` has the Mask2Former/CLIP, precomputed
and shapes adapters), so the same logic scores real GenEval runs and the shapes benchmark.

Interfaces
  detector:          ``detect(image: uint8 (H, W, 3), path: str | None) -> {class: [Det]}``
                     (any order; every class may be absent)
  colour classifier: ``classify(image, dets: list[Det], classname) -> list[colour name]``

Per-image results use the official results-jsonl schema: ``filename, tag, prompt, correct,
reason, metadata`` (JSON string of the prompt object) ``, details`` (JSON string
``{class: [[x0, y0, x1, y1, score], ...]}`` of the kept detections).
"""

from __future__ import annotations

import json
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from janusflow.shapes.world import relative_position
from janusflow.eval.geneval_results import parse_records, read_results

GENEVAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black",
                  "white")
GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


@dataclass
class ScoreParams:
    """The official evaluator's ``--options`` with their defaults."""
    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    max_overlap: float = 1.0      # 1.0 = overlap suppression off
    position_threshold: float = 0.1


@dataclass
class Det:
    box: np.ndarray                    # (5,): x0, y0, x1, y1, score
    mask: Optional[np.ndarray] = None  # bool (H, W) or None
    color: Optional[str] = None        # a colour label carried by precomputed detections
    extra: dict = field(default_factory=dict)

    @property
    def score(self) -> float:
        return float(self.box[4])


def box_iou(a, b) -> float:
    """IoU with the official evaluator's inclusive-pixel (+1) convention."""
    def area(x):
        return max(x[2] - x[0] + 1, 0) * max(x[3] - x[1] + 1, 0)
    inter = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = area(a) + area(b) - inter
    return inter / union if union else 0.0


def filter_detections(raw: dict, tag: str, params: ScoreParams = ScoreParams()) -> dict:
    """Detections kept for scoring: per class, score above the threshold (the counting
    threshold for *every* class in a counting image), best first, at most ``max_objects``,
    then greedy suppression of boxes overlapping a kept one by IoU >= ``max_overlap``
    (never, at the default 1.0). Classes left empty are dropped."""
    thr = params.counting_threshold if tag == "counting" else params.threshold
    kept = {}
    for cls, dets in raw.items():
        order = sorted((d for d in dets if d.score > thr), key=lambda d: -d.score)
        order = order[:params.max_objects]
        out = []
        while order:
            best = order.pop(0)
            out.append(best)
            if params.max_overlap != 1:
                order = [d for d in order if box_iou(best.box, d.box) < params.max_overlap]
        if out:
            kept[cls] = out
    return kept


def evaluate(image, objects: dict, metadata: dict, color_classifier=None,
             params: ScoreParams = ScoreParams()):
    """``(correct, reason)`` for one image. ``objects``: output of :func:`filter_detections`.

    include entries are ANDed, exclude entries ORed. An include ``{class, count}`` looks only at
    the ``count`` best detections of its class; they must all have the requested colour, and
    each must stand in the requested relation to every detection matched by include[g].
    """
    correct, reasons, groups = True, [], []
    for req in metadata.get("include", []):
        cls, n = req["class"], int(req["count"])
        found = objects.get(cls, [])[:n]
        ok = True
        if len(found) < n:
            ok = False
            reasons.append(f"expected {cls}>={n}, found {len(found)}")
        else:
            if "color" in req:
                if color_classifier is None:
                    raise ValueError(f"prompt {metadata.get('prompt')!r} needs a colour classifier")
                colors = list(color_classifier.classify(image, found, cls))
                if colors.count(req["color"]) < n:
                    ok = False
                    seen = ", ".join(f"{colors.count(c)} {c}" for c in dict.fromkeys(colors))
                    reasons.append(f"expected {req['color']} {cls}>={n}, found "
                                   f"{colors.count(req['color'])} {req['color']}; and {seen}")
            if "position" in req and ok:
                rel, target = req["position"]
                if groups[int(target)] is None:
                    ok = False
                    reasons.append(f"no target for {cls} to be {rel}")
                else:
                    for det in found:
                        for tgt in groups[int(target)]:
                            rels = relative_position(det.box, tgt.box, params.position_threshold)
                            if rel not in rels:
                                ok = False
                                reasons.append(f"expected {cls} {rel} target, found "
                                               f"{' and '.join(sorted(rels)) or 'no relation to'} target")
                                break
                        if not ok:
                            break
        correct &= ok
        groups.append(found if ok else None)
    for req in metadata.get("exclude", []):
        cls, n = req["class"], int(req["count"])
        if len(objects.get(cls, [])) >= n:
            correct = False
            reasons.append(f"expected {cls}<{n}, found {len(objects[cls])}")
    return correct, "\n".join(reasons)


def score_image(image, raw: dict, metadata: dict, color_classifier=None, *, filename: str = "",
                params: ScoreParams = ScoreParams()) -> dict:
    """One results-jsonl record (official schema) for ``image`` with raw detections ``raw``."""
    kept = filter_detections(raw, metadata["tag"], params)
    correct, reason = evaluate(image, kept, metadata, color_classifier, params)
    return {
        "filename": filename, "tag": metadata["tag"], "prompt": metadata["prompt"],
        "correct": bool(correct), "reason": reason, "metadata": json.dumps(metadata),
        "details": json.dumps({c: [np.asarray(d.box, float).tolist() for d in v]
                               for c, v in kept.items()}),
    }


# ------------------------------------------------------------------ aggregation


class IncompleteResultsError(ValueError):
    """Raised instead of an overall score when prompts or images are missing."""

    def __init__(self, problems):
        self.problems = list(problems)
        shown = "\n  ".join(self.problems[:25])
        more = f"\n  ... and {len(self.problems) - 25} more" if len(self.problems) > 25 else ""
        super().__init__(f"incomplete GenEval results, refusing to report an overall score "
                         f"({len(self.problems)} problem(s)):\n  {shown}{more}")


def _meta(rec):
    m = rec["metadata"]
    return json.loads(m) if isinstance(m, str) else m


def _canon(meta) -> str:
    return json.dumps(meta, sort_keys=True)


_FILE_RE = re.compile(r"(?:^|[/\\])(\d+)[/\\]samples[/\\](\d+)\.png$")


def completeness_problems(results: list, expected: Optional[list] = None,
                          n_images: Optional[int] = None, tags=GENEVAL_TAGS) -> list:
    """Everything that makes ``results`` an incomplete run; empty when complete.

    With ``expected`` (the prompt list, in layout order) each prompt index must have exactly
    ``n_images`` images (default: the most any prompt has) and the matching metadata. Without
    it, every tag in ``tags`` must be present and every prompt must have ``n_images`` images.
    """
    problems = []
    if not results:
        return ["no results at all"]
    by_prompt = OrderedDict()
    parsed = [_FILE_RE.search(str(r.get("filename", ""))) for r in results]
    use_index = all(parsed)  # group by prompt folder: repeated prompts stay distinct
    dup = sorted(f for f, c in Counter(str(r.get("filename", "")) for r in results).items() if c > 1)
    problems += [f"duplicate result for {f}" for f in dup[:10]]
    for rec, m in zip(results, parsed):
        key = int(m.group(1)) if use_index else _canon(_meta(rec))
        by_prompt.setdefault(key, []).append(rec)
    n = n_images or max(len(v) for v in by_prompt.values())
    if expected is not None:
        absent = (sum(i not in by_prompt for i in range(len(expected))) if use_index else
                  len({_canon(m) for m in expected} - set(by_prompt)))
        if absent:      # the count first: a list of 500 absent prompts hides it
            problems.append(f"{absent} of {len(expected)} prompts of the prompt file have no results")
        if use_index:
            for i, meta in enumerate(expected):
                recs = by_prompt.get(i, [])
                if not recs:
                    problems.append(f"prompt {i:05d} ({meta['tag']}: {meta['prompt']!r}): no images")
                    continue
                if len(recs) != n:
                    problems.append(f"prompt {i:05d} ({meta['prompt']!r}): {len(recs)} of {n} images")
                if any(_canon(_meta(r)) != _canon(meta) for r in recs):
                    problems.append(f"prompt {i:05d}: results metadata differs from the prompt file")
            extra = sorted(k for k in by_prompt if not 0 <= k < len(expected))
            problems += [f"prompt folder {k:05d} is not in the prompt file" for k in extra]
        else:
            want = OrderedDict()
            for meta in expected:
                want[_canon(meta)] = want.get(_canon(meta), 0) + n
            for key, cnt in want.items():
                got = len(by_prompt.get(key, []))
                if got != cnt:
                    problems.append(f"{json.loads(key)['prompt']!r}: {got} of {cnt} images")
            problems += [f"{json.loads(k)['prompt']!r} is not in the prompt file"
                         for k in by_prompt if k not in want]
    else:
        present = {r["tag"] for r in results}
        problems += [f"tag {t!r} has no results" for t in tags if t not in present]
        for key, recs in by_prompt.items():
            if len(recs) != n:
                where = f"prompt {key:05d} " if use_index else ""
                problems.append(f"{where}{recs[0]['prompt']!r}: {len(recs)} of {n} images")
    return problems


def summarize(results, expected: Optional[list] = None, n_images: Optional[int] = None, *,
              strict: bool = True, tags=GENEVAL_TAGS) -> dict:
    """The official summary of ``results`` (records or a results-jsonl path).

    Per tag: fraction of correct images (tags in order of first appearance); overall: the
    unweighted mean of the tag scores. Every record is type-checked
    (:mod:`janusflow.eval.geneval_results`); bad and duplicated records are skipped, counted
    and make the results incomplete. Incomplete results raise :class:`IncompleteResultsError`;
    with ``strict=False`` the overall is None instead.
    """
    parsed = (parse_records((f"record {i}", r) for i, r in enumerate(results))
              if isinstance(results, list) else read_results(results))
    results = parsed.records
    problems = parsed.problems + completeness_problems(results, expected, n_images, tags)
    if problems and strict:
        raise IncompleteResultsError(problems)
    per_tag, counts = OrderedDict(), OrderedDict()
    for r in results:
        c = counts.setdefault(r["tag"], [0, 0])
        c[0] += bool(r["correct"])
        c[1] += 1
    for t, (c, n) in counts.items():
        per_tag[t] = c / n
    prompts = OrderedDict()
    for r in results:
        key = r["metadata"] if isinstance(r["metadata"], str) else _canon(r["metadata"])
        prompts[key] = prompts.get(key, False) or bool(r["correct"])
    return {
        "per_tag": dict(per_tag), "counts": {t: tuple(c) for t, c in counts.items()},
        "overall": None if problems else float(np.mean(list(per_tag.values()))),
        "n_images": len(results), "n_prompts": len(prompts),
        "correct_images": float(np.mean([bool(r["correct"]) for r in results])) if results else 0.0,
        "correct_prompts": float(np.mean(list(prompts.values()))) if prompts else 0.0,
        "complete": not problems, "problems": problems,
        "bad_records": parsed.bad, "duplicate_records": parsed.duplicates,
    }


def format_summary(s: dict) -> str:
    lines = [f"images: {s['n_images']}  prompts: {s['n_prompts']}",
             f"% correct images: {s['correct_images']:.2%}  % correct prompts: {s['correct_prompts']:.2%}"]
    for t, acc in s["per_tag"].items():
        c, n = s["counts"][t]
        lines.append(f"{t:<16} = {acc:.2%} ({c} / {n})")
    lines.append("overall (mean over tags): " +
                 (f"{s['overall']:.5f}" if s["overall"] is not None else "NOT REPORTED (incomplete)"))
    return "\n".join(lines)
