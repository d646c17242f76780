"""The ablation table as Markdown: the README's table (:func:`ablation_markdown`), rendered from ``ablation.json``'s
content as :func:`rap_deploy.train.ablate.run_ablation` builds it."""

from __future__ import annotations

from typing import Any

from rap_deploy.train.ablate import METRIC_KEYS, heldout_view, two_stage_view


def _pm(mean: float, std: float | None, n: int) -> str:
    """``mean ± std``, or the mean alone for one run (``std`` None: no sample std)."""
    return f"{mean:.1f}" if n < 2 or std is None else f"{mean:.1f} ± {std:.1f}"


def _paired(check: dict[str, Any]) -> str:
    paired = check.get("paired")
    if not paired:
        return "-"
    if len(paired["seeds"]) < 2 or paired["std"] is None:
        return f"{paired['mean']:+.2f}"
    return f"{paired['mean']:+.2f} ± {paired['std']:.2f}"


def _met(passed: bool | None) -> str:
    """A check's verdict: yes, no, or not decided (a row of one seed has no seed std)."""
    return "-" if passed is None else "yes" if passed else "no"


def ablation_markdown(result: dict[str, Any]) -> str:
    """The Markdown table (mean ± sample std over seeds) and the target checks."""
    seeds = ", ".join(str(s) for s in result["seeds"])
    recipe = result.get("recipe") or {}
    weight, lorm_mult = recipe.get("selection_loss_weight") or 0.0, recipe.get("lorm_lr_mult") or 1.0
    lines = ["Incomplete: the rows finished before the command stopped; run it again to finish the table.", ""] \
        if result.get("complete") is False else []
    lines += [f"Seeds {seeds}; mean ± sample std (ddof 1) of each run's best.pt epoch (selection: max t2v RSum + "
              "v2t RSum, later epoch on ties)." + (f" Trained with the selection loss at weight {weight:g}."
                                                    if weight else "")
              + (f" LoRM's factors trained at {lorm_mult:g}× the learning rate." if lorm_mult != 1.0 else ""), "",
              "| model | t2v R@1 | R@5 | R@10 | MnR | v2t R@1 | R@5 | R@10 | MnR | trainable params | max offset "
              "change |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        n = row["n"]
        cells = [_pm(row["mean"][d][k], row["std"][d][k], n) for d in ("t2v", "v2t") for k in METRIC_KEYS]
        params = row["runs"][0]["trainable_params"] if row["name"] != "zero_shot" else 0
        change = row.get("offset_change_mean")
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {params:,} | "
                     + ("-" if change is None or row["name"] == "zero_shot" else f"{change:.3f}") + " |")
    lines += _heldout_table(result)
    lines += _two_stage_table(result)
    checks = result.get("targets") or []
    if checks:
        lines += ["", "| target | measured | met | paired, seed by seed (mean ± std) |", "|---|---|---|---|"]
        lines += [f"| {c['check']} | {c['value']:+.2f} | {_met(c['passed'])} | {_paired(c)} |" for c in checks]
    return "\n".join(lines) + "\n"


def _heldout_table(result: dict[str, Any]) -> list[str]:
    """The held-out split's table (no lines when no row was scored there)."""
    rows = [r for r in result["rows"] if "heldout" in r]
    if not rows:
        return []
    split, gallery = rows[0]["heldout"]["split"], rows[0]["heldout"]["gallery"]
    scored = (f", each query ranked within its own gallery of {gallery} consecutive videos "
              f"(`--heldout-gallery {gallery}`)" if gallery else "")
    lines = ["", f"The same runs' best.pt on the held-out split: {split['videos']} test videos drawn with seed "
             f"{split['seed']}, none of them (nor its time reverse) a scene of the world's "
             f"{split['world_scenes']} (`--heldout-videos {split['videos']}`){scored}.", "",
             "| model (held-out) | t2v R@1 | R@5 | R@10 | MnR | v2t R@1 | R@5 | R@10 | MnR |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        stats = row["heldout"]
        cells = [_pm(stats["mean"][d][k], stats["std"][d][k], stats["n"]) for d in ("t2v", "v2t")
                 for k in METRIC_KEYS]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return lines


def _two_stage_table(result: dict[str, Any]) -> list[str]:
    """The two-stage search's R@1, R@5 and R@10 (t2v) and R@1 (v2t), on the test split and, where scored, the
    held-out one (no lines when no row has two-stage scores)."""
    staged = two_stage_view(result)
    if not staged["rows"]:
        return []
    heldout = {r["name"]: r for r in two_stage_view(heldout_view(result))["rows"]}
    top_m = (result.get("recipe") or {}).get("top_m")
    head = "| model (two-stage search) | t2v R@1 | R@5 | R@10 | v2t R@1 |"
    lines = ["", f"The same runs in the two-stage search `rapdeploy search --top-m {top_m}` serves (the recipe's "
             f"top_m): stage 1, meanP of the frame embeddings, shortlists {top_m} videos per query and the ASA head "
             "re-ranks them; a video stage 1 misses is lost.", "",
             head + (" held-out t2v R@1 | R@5 | R@10 | v2t R@1 |" if heldout else ""),
             "|---|---|---|---|---|" + ("---|---|---|---|" if heldout else "")]
    for row in staged["rows"]:
        cells = [_staged_cells(row)] + ([_staged_cells(heldout[row["name"]])] if row["name"] in heldout else
                                        [" - | - | - | -"] if heldout else [])
        lines.append(f"| {row['label']} |" + " |".join(cells) + " |")
    return lines


def _staged_cells(row: dict[str, Any]) -> str:
    keys = (("t2v", "R1"), ("t2v", "R5"), ("t2v", "R10"), ("v2t", "R1"))
    return " |".join(f" {_pm(row['mean'][d][k], row['std'][d][k], row['n'])}" for d, k in keys)
