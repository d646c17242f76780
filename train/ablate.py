"""The ablation table: every component of RAP switched off in turn, over several seeds, mean ± std.

:func:`run_ablation` trains one run per (row, seed) with the same recipe (the options of the ``rap`` row, changed
only where the row says), reads each run's ``best.pt`` epoch from its ``summary.json`` (selection rule of
:mod:`rap_deploy.train.selection`), and aggregates. Runs live in ``OUT/<row>/seed<k>/``; a complete run is read back,
a killed one is resumed, so a rerun only trains what is missing; a run trained with other options (another epoch
count, backbone or adapter size) is refused rather than mixed into the table. :mod:`rap_deploy.train.ablate_report`
renders the table the README shows, with the target checks of issue 14 underneath.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rap_deploy.errors import UsageError
from rap_deploy.train.ablate_runs import checked_run, run_one
from rap_deploy.train.loop import TrainOptions


@dataclass(frozen=True)
class AblationRow:
    """One line of the table: ``changes`` to the recipe's :class:`TrainOptions` (``None`` removes an option, so a
    preset can set it); ``seeded`` is False for rows that do not depend on the seed (run once); ``same_as`` names a
    row whose runs this row shares because the two build the same model (same parameters, same computation)."""

    name: str
    label: str
    changes: dict[str, Any] = field(default_factory=dict)
    seeded: bool = True
    same_as: str | None = None


ROWS: tuple[AblationRow, ...] = (
    AblationRow("zero_shot", "zero-shot (frozen backbone, meanP, no training)", {"epochs": 0}, seeded=False),
    # rap_light and --no-asa both drop the ASA head and keep LoRM: the same trainable parameters, initialised from the
    # same seed, computing the same similarity (tests/test_train.py checks it), so they share their runs.
    AblationRow("rap_light", "`rap_light` (LoRM only, query-independent; same model as `--no-asa`)",
                {"variant": "rap_light"}, same_as="no_asa"),
    AblationRow("no_asa", "LoRM only (`--no-asa`)", {"use_asa": False}),
    AblationRow("no_lorm", "ASA only (`--no-lorm`)", {"use_lorm": False}),
    AblationRow("offsets_zero", "offsets frozen at zero (`--freeze-offsets`)", {"freeze_offsets": True}),
    AblationRow("saliency", "saliency selection (`--selection saliency`)", {"asa_selection": "saliency"}),
    AblationRow("rap", "`rap` (LoRM + ASA, learned offsets)", {}),
    AblationRow("paper", "`paper` preset (ASA at the joint width, LoRM rank 2)",
                {"preset": "paper", "asa_dim": None, "lorm_rank": None}),
)
ROW_NAMES = tuple(r.name for r in ROWS)
# Rows compared against `rap` in the target checks: each removes or replaces exactly one component.
SINGLE_COMPONENT = ("rap_light", "no_asa", "no_lorm", "offsets_zero", "saliency")
METRIC_KEYS = ("R1", "R5", "R10", "MnR")


def select_rows(names: Sequence[str] | None) -> list[AblationRow]:
    """The rows named (all when ``names`` is empty or None), in table order. Raises :class:`UsageError` for an
    unknown name."""
    if not names:
        return list(ROWS)
    unknown = sorted(set(names) - set(ROW_NAMES))
    if unknown:
        raise UsageError(f"unknown ablation rows {unknown}; use some of {', '.join(ROW_NAMES)}")
    return [r for r in ROWS if r.name in names]


def row_options(base: TrainOptions, row: AblationRow, seed: int, out: Path) -> TrainOptions:
    """The recipe ``base`` with ``row``'s changes, ``seed`` and run folder ``out``."""
    return dataclasses.replace(base, **row.changes, seed=seed, out=str(out))


def same_options_row(base: TrainOptions, row: AblationRow) -> AblationRow:
    """The first row of :data:`ROWS` whose changes turn ``base`` into the same options as ``row``'s (``row`` itself
    when no earlier row does). Such rows train the same model from the same seed, so they share runs: the ``paper``
    row of a recipe that already is the paper preset is the ``rap`` row."""
    mine = row_options(base, row, 0, Path())
    for other in ROWS:
        if other.name == row.name:
            break
        if other.same_as is None and other.seeded == row.seeded and row_options(base, other, 0, Path()) == mine:
            return other
    return row


def _label(row: AblationRow, source: AblationRow) -> str:
    """The row's label, saying whose runs it shares when the recipe (not the row) makes it another row's model."""
    if source.name == row.name or row.same_as:
        return row.label
    return f"{row.label}: the recipe's own model, the runs of `{source.name}`"


def _offset_change(summary: dict[str, Any]) -> float | None:
    """Largest |learned − initial| over every head's γ and δ (``None`` without ASA offsets)."""
    start, best = summary.get("offsets_initial"), (summary.get("best") or {}).get("offsets")
    if not start or not best:
        return None
    a = np.concatenate([np.ravel(start["gamma"]), np.ravel(start["delta"])])
    b = np.concatenate([np.ravel(best["gamma"]), np.ravel(best["delta"])])
    return float(np.abs(b - a).max())


def run_record(summary: dict[str, Any], seed: int) -> dict[str, Any]:
    """The numbers the table needs from one run's summary (its ``best.pt`` epoch)."""
    best = summary.get("best") or {}
    if "t2v" not in best:
        raise UsageError(f"run {summary.get('run_dir')} has no evaluated epoch; it cannot enter the table")
    offsets = best.get("offsets")
    return {"seed": seed, "run_dir": summary.get("run_dir"), "best_epoch": summary.get("best_epoch"),
            **_table_metrics(best),
            "trainable_params": summary.get("trainable_params"), "train_seconds": summary.get("train_seconds"),
            "steps": summary.get("steps"), "offsets": offsets, "offset_change": _offset_change(summary),
            "max_abs_offset": (max(abs(v) for v in np.concatenate([np.ravel(offsets["gamma"]),
                                                                   np.ravel(offsets["delta"])]))
                               if offsets else None),
            "lorm": best.get("lorm"), **_two_stage_metrics(best)}


def _two_stage_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """``{"two_stage": ...}`` cut to the table's metrics, or nothing for metrics without a two-stage score."""
    return {"two_stage": _table_metrics(metrics["two_stage"])} if "two_stage" in metrics else {}


def _table_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """``{"t2v", "v2t"}`` of ``metrics``, each cut to :data:`METRIC_KEYS`."""
    return {d: {k: metrics[d][k] for k in METRIC_KEYS} for d in ("t2v", "v2t")}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof 1; ``None`` for a single run, where it is undefined) of every metric
    over ``runs``, and of their held-out scores under ``heldout`` when every run has one."""
    out = _metric_stats(runs)
    if runs and all("two_stage" in r for r in runs):
        out["two_stage"] = _metric_stats([r["two_stage"] for r in runs])
    if runs and all("heldout" in r for r in runs):
        heldout = [r["heldout"] for r in runs]
        out["heldout"] = {**_metric_stats(heldout), "split": heldout[0]["split"], "gallery": heldout[0]["gallery"]}
        if all("two_stage" in h for h in heldout):
            out["heldout"]["two_stage"] = _metric_stats([h["two_stage"] for h in heldout])
    changes = [r["offset_change"] for r in runs if r["offset_change"] is not None]
    out["offset_change_mean"] = float(np.mean(changes)) if changes else None
    return out


def _metric_stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"mean", "std", "n"}`` of each of :data:`METRIC_KEYS` under ``t2v`` and ``v2t`` over ``runs`` (``std``
    ddof 1, ``None`` when ``n`` is 1: ``ablation.json`` writes null, not a spread of 0 that was never measured)."""
    out: dict[str, Any] = {"mean": {}, "std": {}, "n": len(runs)}
    for d in ("t2v", "v2t"):
        for stat in ("mean", "std"):
            out[stat][d] = {}
        for k in METRIC_KEYS:
            values = np.asarray([r[d][k] for r in runs], dtype=np.float64)
            out["mean"][d][k] = float(values.mean())
            out["std"][d][k] = float(values.std(ddof=1)) if len(values) > 1 else None
    return out


def run_ablation(base: TrainOptions, out: str | Path, seeds: Sequence[int], rows: Sequence[str] | None = None,
                 progress: bool = True, log: Callable[[str], None] = print,
                 heldout: Callable[[str], dict[str, Any]] | None = None, jobs: int = 1,
                 threads: int | None = None) -> dict[str, Any]:
    """Train every (row, seed) of the ablation with the recipe ``base`` and write ``OUT/ablation.json`` and
    ``OUT/ablation.md``; returns the JSON content. With ``heldout`` (a run folder -> its ``best.pt``'s held-out
    metrics, :func:`rap_deploy.train.heldout_eval.heldout_metrics`; picklable when ``jobs`` > 1) every run is also
    scored there. ``jobs`` > 1 runs that many runs at once, each in its own process with ``threads`` intra-op
    threads (:func:`_run_in_processes`); the table is the same as one at a time.

    Both files are written again after each row (``"complete": false`` until the last), so a stopped command leaves
    the rows it finished in both, never a table of an earlier call beside them.

    Raises :class:`UsageError` for no seeds, unknown rows, a run folder of another recipe, or a run without an
    evaluated epoch.
    """
    if not seeds:
        raise UsageError("pass at least one seed (--seeds 0,1,2)")
    out = Path(out)
    plan = _plan(base, out, seeds, rows)
    records: dict[str, dict[str, Any]] = {}
    if jobs > 1:
        tasks = list({o.out: o for _, _, runs in plan for o in runs}.values())  # shared runs train once
        records = _run_in_processes(tasks, heldout, jobs, threads, log)
    result: dict[str, Any] = {"seeds": list(seeds), "recipe": base.to_dict(), "rows": []}
    for row, source, run_options in plan:
        runs = []
        for options in run_options:
            if options.out not in records:
                log(f"[ablate] {row.name} seed {options.seed}: {options.out}")
                records[options.out] = _run_and_score(options, progress, heldout)
            runs.append(records[options.out])
        result["rows"].append({"name": row.name, "label": _label(row, source), "changes": row.changes,
                               "runs": runs, "seeded": row.seeded, **aggregate(runs)})
        _write_tables(out, result, complete=False)  # partial results survive a kill
    result["targets"] = target_checks(result)
    _write_tables(out, result, complete=True)
    return result


def _write_tables(out: Path, result: dict[str, Any], complete: bool) -> None:
    """``ablation.json`` and ``ablation.md`` of ``result`` (the rows so far unless ``complete``). Both texts are
    made before either file is written: a result that cannot be rendered leaves the two files of the last call that
    could, never a new ``ablation.json`` beside an old table."""
    from rap_deploy.atomic import json_text, write_text_atomic
    from rap_deploy.train.ablate_report import ablation_markdown  # here: ablate_report imports this module

    result["complete"] = complete
    texts = {"ablation.json": json_text(result) + "\n", "ablation.md": ablation_markdown(result)}
    for name, text in texts.items():
        write_text_atomic(out / name, text)


def _plan(base: TrainOptions, out: Path, seeds: Sequence[int],
          rows: Sequence[str] | None) -> list[tuple[AblationRow, AblationRow, list[TrainOptions]]]:
    """``(row, the row whose runs it reads, the options of each of its runs)`` in table order."""
    by_name = {r.name: r for r in ROWS}
    plan = []
    for row in select_rows(rows):
        source = by_name[row.same_as] if row.same_as else same_options_row(base, row)
        plan.append((row, source, [row_options(base, source, seed, out / source.name / f"seed{seed}")
                                   for seed in (seeds if row.seeded else seeds[:1])]))
    return plan


def _run_and_score(options: TrainOptions, progress: bool, heldout: Callable[[str], dict[str, Any]] | None,
                   threads: int | None = None) -> dict[str, Any]:
    """One run's table record (:func:`run_record`), trained, resumed or read back by
    :func:`~rap_deploy.train.ablate_runs.run_one`, with its held-out scores under ``"heldout"`` when ``heldout`` is
    given, all under the run folder's lock (two `ablate` commands never write one run). ``threads`` sets PyTorch's
    intra-op threads first (a worker process of :func:`_run_in_processes`)."""
    from rap_deploy.locks import folder_lock

    if threads:
        import torch

        torch.set_num_threads(threads)
    with folder_lock(options.out, "ablate", "run folder"):
        record = run_record(run_one(options, progress), options.seed)
        if heldout is not None:
            record["heldout"] = _heldout_record(heldout(options.out))
    return record


def _run_in_processes(tasks: list[TrainOptions], heldout: Callable[[str], dict[str, Any]] | None, jobs: int,
                      threads: int | None, log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """The record of every run in ``tasks`` (keyed by run folder), ``jobs`` at a time in spawned worker processes
    with ``threads`` intra-op threads each (default: the CPU count shared out;
    :func:`~rap_deploy.train.ablate_jobs.run_in_processes`). Every folder is checked against its recipe before any
    process starts. The first failing run raises its error here, and every run still training is stopped on the way
    out: a stopped run resumes from its ``last.pt`` on the next call."""
    import os
    import time

    from rap_deploy.train.ablate_jobs import run_in_processes

    records, todo = {}, []
    for options in tasks:  # every folder checked first; finished runs with their scores cached are read back here
        record = _read_back(options, checked_run(Path(options.out), options), heldout)
        if record is None:
            todo.append(options)
        else:
            records[options.out] = record
    if not todo:
        return records
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    log(f"[ablate] {len(todo)} runs to train or score ({len(records)} read back), {min(jobs, len(todo))} at a time, "
        f"{threads} thread(s) each (each run's epochs: its metrics.jsonl)")
    start, done = time.monotonic(), []

    def report(run_dir: str, record: dict[str, Any]) -> None:
        done.append(run_dir)
        held = f", held-out {record['heldout']['t2v']['R1']:.2f}" if "heldout" in record else ""
        log(f"[ablate] {len(done)}/{len(todo)} {run_dir}: t2v R@1 {record['t2v']['R1']:.2f}{held} "
            f"({time.monotonic() - start:.0f} s)")

    return records | run_in_processes(_run_and_score, {o.out: (o, False, heldout, threads) for o in todo}, jobs,
                                      report)


def _read_back(options: TrainOptions, summary: dict[str, Any] | None,
               heldout: Callable[..., dict[str, Any]] | None) -> dict[str, Any] | None:
    """A finished run's record read in this process (no worker to start), or ``None`` when the run still needs
    training or its held-out score is not cached."""
    if summary is None or not summary.get("complete"):
        return None
    record = run_record(summary, options.seed)
    if heldout is not None:
        cached = heldout(options.out, cached_only=True)
        if cached is None:
            return None
        record["heldout"] = _heldout_record(cached)
    return record


def _heldout_record(metrics: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's held-out metrics the table keeps."""
    return {**_table_metrics(metrics), **_two_stage_metrics(metrics),
            **{k: metrics[k] for k in ("videos", "seconds", "split", "gallery")}}


def _row(result: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((r for r in result["rows"] if r["name"] == name), None)


def target_checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 14's targets on the table: ``rap`` ≥ zero-shot + 15 t2v R@1, LoRM alone ≥ zero-shot + 5, ``rap`` above
    each single-component ablation by more than the larger seed std, some offset moved by ≥ 0.1 from its start.
    Each check is ``{"check", "value", "passed"}`` (``passed`` None for a "rap above" check with a row of one
    seed: no seed std to compare with), and each "rap above" check also carries ``"paired"``
    (:func:`paired_difference`, shown next to it, never part of ``passed``); checks whose rows are missing are left
    out. When ``rap`` was scored on a held-out split, the "rap above" checks follow again on those scores; then
    all of them again on the two-stage search (:func:`two_stage_view`), the ranking `rapdeploy search` serves."""
    checks: list[dict[str, Any]] = []
    zs, rap, lorm = _row(result, "zero_shot"), _row(result, "rap"), _row(result, "no_asa")
    if zs and rap:
        gain = _r1(rap) - _r1(zs)
        checks.append({"check": "rap >= zero-shot + 15 t2v R@1", "value": round(gain, 2), "passed": gain >= 15})
    if zs and lorm:
        gain = _r1(lorm) - _r1(zs)
        checks.append({"check": "LoRM alone (--no-asa) >= zero-shot + 5 t2v R@1", "value": round(gain, 2),
                       "passed": gain >= 5})
    if rap:
        checks += _above_checks(result, rap, "")
        moved = [r["offset_change"] for r in rap["runs"] if r["offset_change"] is not None]
        if moved:
            checks.append({"check": "learned offsets moved >= 0.1 (patch or frame units) on some head",
                           "value": round(min(moved), 4), "passed": min(moved) >= 0.1})
        heldout = heldout_view(result) if "heldout" in rap else None
        if heldout:
            checks += _above_checks(heldout, _row(heldout, "rap"), " on the held-out split")
        for view, where in ((result, ""), (heldout, " on the held-out split")):
            staged = two_stage_view(view) if view else None
            if staged and _row(staged, "rap"):
                checks += _above_checks(staged, _row(staged, "rap"), f"{where} in the two-stage search")
    return checks


def _above_checks(result: dict[str, Any], rap: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """"rap above <row>" for each single-component row of ``result`` present: the margin in mean t2v R@1 against
    the larger of the two rows' seed std, with the paired difference beside it. A row of one seed has no seed std
    (its ``std`` is ``None``): the check is then not decided, ``"passed": None``."""
    checks = []
    for name in SINGLE_COMPONENT:
        other = _row(result, name)
        if other is None:
            continue
        margin = _r1(rap) - _r1(other)
        stds = (rap["std"]["t2v"]["R1"], other["std"]["t2v"]["R1"])
        measured = min(rap["n"], other["n"]) >= 2 and None not in stds
        std = max(stds) if measured else None
        spread = f"{std:.2f}" if measured else "none: one seed"
        checks.append({"check": f"rap above {name}{where} by more than the seed std ({spread})",
                       "value": round(margin, 2), "passed": margin > std if measured else None,
                       "paired": paired_difference(rap["runs"], other["runs"])})
    return checks


def _view(result: dict[str, Any], key: str) -> dict[str, Any]:
    """``result`` with each row's statistics and runs under ``key`` in place of its own (rows without them left
    out), so the checks and tables read them as a table of their own; a view keeps the two-stage statistics found
    under ``key``, so views compose."""
    rows = []
    for row in result["rows"]:
        if key not in row:
            continue
        stats = row[key]
        rows.append({"name": row["name"], "label": row.get("label", row["name"]), "mean": stats["mean"],
                     "std": stats["std"], "n": stats["n"], "runs": [{"seed": r["seed"], **r[key]} for r in row["runs"]],
                     **({"two_stage": stats["two_stage"]} if "two_stage" in stats else {})})
    return {"rows": rows}


def heldout_view(result: dict[str, Any]) -> dict[str, Any]:
    """The rows' held-out scores as a table (:func:`_view`)."""
    return _view(result, "heldout")


def two_stage_view(result: dict[str, Any]) -> dict[str, Any]:
    """The rows' two-stage scores as a table (:func:`_view`): the stage-1 meanP shortlist of ``top_m`` videos
    re-ranked by the ASA head, as deployed."""
    return _view(result, "two_stage")


def paired_difference(runs: list[dict[str, Any]], others: list[dict[str, Any]]) -> dict[str, Any] | None:
    """t2v R@1 of ``runs`` minus ``others``, seed by seed, over the seeds both rows trained: ``{"seeds", "mean",
    "std"}`` (std ddof 1; ``None`` for one seed, where it is undefined), or ``None`` when they share no seed.

    Runs of one seed see the same batches in the same order (:func:`rap_deploy.train.batches.epoch_generator`)
    and, when the rows have the same parameters, start from the same weights (the training seed), so their difference
    leaves out the variance the two rows share; a paired difference whose mean is well above its std is an effect
    the seed std of either row alone can hide."""
    theirs = {r["seed"]: r["t2v"]["R1"] for r in others}
    pairs = [(r["seed"], r["t2v"]["R1"] - theirs[r["seed"]]) for r in runs if r["seed"] in theirs]
    if not pairs:
        return None
    diff = np.asarray([d for _, d in pairs], dtype=np.float64)
    return {"seeds": [s for s, _ in pairs], "mean": round(float(diff.mean()), 4),
            "std": round(float(diff.std(ddof=1)), 4) if len(diff) > 1 else None}


def _r1(row: dict[str, Any]) -> float:
    return row["mean"]["t2v"]["R1"]
