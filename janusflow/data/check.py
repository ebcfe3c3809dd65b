"""Check a run's datasets against what its config asks for, before any training: every field
the task streams read exists, there are enough examples for a step, and generation captions fit
``data.prompt_len`` tokens. One line per problem naming the dataset, the record (and its
``file_name`` where ``janusflow data build`` stored one) and the field.

Problems that make the run impossible (a missing field, an empty or too small dataset) are
errors; captions longer than ``prompt_len`` are warnings (the pipeline cuts them at a
word-piece boundary, so part of what the user wrote is never seen). Reading is bounded: the
fields are checked on the first record (datasets are uniform), lengths on at most
``max_records`` records.
"""

from __future__ import annotations

import dataclasses

from janusflow.data.latents import precomputed_input
from janusflow.data.pipeline import (dataset_label, load_tokenizer, missing_fields, per_process_batch_sizes,
                                     task_sources)
from janusflow.data.sources import as_text_list, get_field, open_source
from janusflow.data.tokenizer import generation_prompt_ids

MAX_RECORDS = 2000       # records whose caption lengths are measured
MAX_LINES = 5            # over-long captions named one by one; the rest counted


@dataclasses.dataclass
class DataReport:
    errors: list
    warnings: list

    @property
    def ok(self) -> bool:
        return not self.errors


def _file_name(record) -> str:
    try:
        names = as_text_list(get_field(record, "file_name"))
    except KeyError:
        return ""
    return f" ({names[0]})" if names and names[0] else ""


def check_data(cfg, tokenizer=None, *, max_records: int = MAX_RECORDS) -> DataReport:
    """Check every task stream the batch draws from (``train.*_batch`` > 0)."""
    errors, warnings = [], []
    batches = per_process_batch_sizes(cfg, 1)
    for task, rows in batches.items():
        for where, keys in task_sources(cfg.data, task) if rows else ():
            if not keys.enabled:
                continue
            try:
                try:  # images left encoded: only their presence is checked here
                    source = open_source(keys, keys.image)
                except KeyError:
                    source = open_source(keys)
            except (FileNotFoundError, ValueError) as e:
                errors.append(f"{where}: {e}")
                continue
            n = len(source)
            if n == 0:
                errors.append(f"{dataset_label(keys)}: no records ({where})")
                continue
            first = source[0]
            missing = missing_fields(task, keys, first, where, precomputed_input(cfg.model).feature)
            errors += missing
            if n < rows:
                errors.append(f"{dataset_label(keys)}: {n} records, fewer than the {rows} train.{task}_batch "
                              f"takes per step (lower train.{task}_batch)")
            if task == "gen" and not missing:
                warnings += _long_captions(cfg, keys, source, tokenizer, max_records)
    return DataReport(errors, warnings)


def _long_captions(cfg, keys, source, tokenizer, max_records) -> list:
    """Warnings for captions over ``data.prompt_len`` tokens: the first few named, the rest counted."""
    n = len(source)
    tok = tokenizer or load_tokenizer(cfg.data, cfg.model)
    long, lines = 0, []
    for i in range(min(n, max_records)):
        rec = source[i]
        for path in keys.caption.split("|"):
            for cap in as_text_list(get_field(rec, path)):
                length = len(generation_prompt_ids(tok, cap, cfg.model.head))
                if length > cfg.data.prompt_len:
                    long += 1
                    if len(lines) < MAX_LINES:
                        lines.append(f"{dataset_label(keys)}: record {i}{_file_name(rec)}: field {path!r}: "
                                     f"{length} tokens > data.prompt_len={cfg.data.prompt_len} "
                                     "(cut; raise data.prompt_len or shorten it)")
    if long > len(lines):
        lines.append(f"{dataset_label(keys)}: {long - len(lines)} more captions over "
                     f"data.prompt_len={cfg.data.prompt_len} tokens")
    return lines


def check_or_refuse(cfg, log=print, warn=None) -> None:
    """Run :func:`check_data` before training: warnings to ``log``, each error as one line to
    ``warn`` (stderr), then a ConfigError saying how many."""
    import sys
    from janusflow.configs.errors import ConfigError
    warn = warn or (lambda m: print(m, file=sys.stderr))
    report = check_data(cfg)
    for line in report.warnings:
        log(f"data check: warning: {line}")
    for line in report.errors:
        warn(f"data check: {line}")
    if report.errors:
        raise ConfigError(f"the data does not fit the config: {len(report.errors)} problem(s), one per line above")
