"""Unit tests of verify's parity rule: tie-aware rank changes, the fp32 / fp16-int8 pass rules, numeric errors."""

from __future__ import annotations

import numpy as np
import pytest

from rap_deploy.engines.verify_rules import (
    DEFAULT_TOLERANCE,
    direction_scores,
    failure_lines,
    judge,
    rank_changes,
    rank_intervals,
    recall_curve,
    vector_error,
)


def _deltas(value: float = 0.0, where: tuple[str, str, str] | None = None) -> dict:
    d = {m: {dr: {k: 0.0 for k in ("R1", "R5", "R10", "MdR", "MnR", "RSum", "ties")} for dr in ("t2v", "v2t")}
         for m in ("asa", "two_stage")}
    if where is not None:
        mode, direction, metric = where
        d[mode][direction][metric] = value
    return d


def _changes(beyond: int = 0, where: tuple[str, str] | None = None) -> dict:
    c = {m: {dr: {"changed": 0, "beyond_ties": 0, "within_ties": 0, "examples": []} for dr in ("t2v", "v2t")}
         for m in ("asa", "two_stage")}
    if where is not None:
        c[where[0]][where[1]]["beyond_ties"] = beyond
    return c


def test_rank_intervals_follow_the_metric_convention():
    scores = np.array([[0.5, 0.9, 0.5, 0.1],   # gt col 0 tied with col 2, one above -> rank 2, could be 2..3
                       [0.2, 0.3, 0.4, 0.9]])  # gt col 3 on top -> rank 1
    rank, lo, hi = rank_intervals(scores, np.array([0, 3]), eps=0.0)
    assert rank.tolist() == [2, 1]
    assert lo.tolist() == [2, 1] and hi.tolist() == [3, 1]
    rank, lo, hi = rank_intervals(scores, np.array([0, 3]), eps=0.45)  # eps wide enough to reach 0.9 and 0.1
    assert lo.tolist() == [1, 1] and hi.tolist() == [4, 1]


def test_rank_change_within_ties_is_not_counted():
    targets = np.array([0, 1])
    ref = np.array([[0.700000, 0.7000004, 0.1], [0.2, 0.9, 0.3]])
    eng = np.array([[0.7000004, 0.700000, 0.1], [0.2, 0.9, 0.3]])  # query 0 swaps with a candidate 4e-7 away
    out = rank_changes(ref, eng, targets, eps=1e-5, labels=["q0", "q1"])
    assert out["changed"] == 1 and out["within_ties"] == 1 and out["beyond_ties"] == 0
    assert out["examples"][0] == {"query": 0, "reference_rank": 2, "engine_rank": 1, "within_ties": True, "id": "q0"}
    # a swap across a real gap is a rank change
    ref_gap = np.array([[0.7, 0.8, 0.1], [0.2, 0.9, 0.3]])
    eng_far = np.array([[0.9, 0.7, 0.1], [0.2, 0.9, 0.3]])
    far = rank_changes(ref_gap, eng_far, targets, eps=1e-5)
    assert far["beyond_ties"] == 1 and far["within_ties"] == 0
    assert far["examples"][0]["engine_rank"] == 1 and not far["examples"][0]["within_ties"]
    # a tie in the reference explains the engine taking either side of it, however far its score moved
    assert rank_changes(ref, eng_far, targets, eps=1e-5)["beyond_ties"] == 0
    # identical scores: nothing changed
    assert rank_changes(ref, ref, targets)["changed"] == 0


def test_fp32_rule_is_zero_rank_changes_beyond_ties():
    passed, checks, rule = judge("fp32", _deltas(), _changes())
    assert passed and "fp32" in rule
    assert {c["metric"] for c in checks} == {"rank_changes"} and len(checks) == 4
    passed, checks, _ = judge("fp32", _deltas(), _changes(1, ("two_stage", "v2t")))
    assert not passed
    failed = [c for c in checks if not c["passed"]]
    assert failed == [{"mode": "two_stage", "direction": "v2t", "metric": "rank_changes", "value": 1, "limit": 0,
                       "passed": False}]


def test_fp16_int8_rule_is_tolerance_on_every_recall():
    for precision in ("fp16", "int8"):
        passed, checks, rule = judge(precision, _deltas(-DEFAULT_TOLERANCE, ("asa", "t2v", "R1")), _changes(5))
        assert passed, "a delta equal to the tolerance passes; rank changes are not gated for fp16/int8"
        assert len(checks) == 12 and "0.5" in rule
        passed, checks, _ = judge(precision, _deltas(0.6, ("two_stage", "v2t", "R10")), _changes())
        assert not passed
        assert [(c["mode"], c["direction"], c["metric"]) for c in checks if not c["passed"]] == [
            ("two_stage", "v2t", "R10")]
    # MdR / MnR / RSum are reported, not gated
    assert judge("int8", _deltas(5.0, ("asa", "t2v", "MnR")), _changes())[0]
    # an explicit tolerance
    assert judge("int8", _deltas(0.9, ("asa", "t2v", "R5")), _changes(), tolerance=1.0)[0]
    assert not judge("int8", _deltas(0.9, ("asa", "t2v", "R5")), _changes(), tolerance=0.5)[0]


def test_the_tolerance_recorded_is_the_one_applied():
    """verify.json's tolerance read 0.5 for an fp32 engine verified without --tolerance, while its rule (and judge)
    held it to rank equality only; the recorded limit is the applied one: none (null) there."""
    from rap_deploy.engines.verify_rules import applied_tolerance

    assert applied_tolerance("fp32", None) is None and "ΔR@K" not in judge("fp32", _deltas(), _changes())[2]
    assert applied_tolerance("fp32", 1) == 1.0 and applied_tolerance("int8", 2.0) == 2.0
    assert applied_tolerance("fp16", None) == applied_tolerance("int8", None) == DEFAULT_TOLERANCE


def test_fp32_with_explicit_tolerance_checks_both():
    passed, checks, rule = judge("fp32", _deltas(2.0, ("asa", "t2v", "R1")), _changes(), tolerance=1.0)
    assert not passed and "rank" in rule and "1" in rule
    assert len(checks) == 16


def test_direction_scores_multi_caption_uses_best_caption():
    # 3 captions, 2 videos; captions 0,1 belong to video 0
    sim = np.array([[0.1, 0.8], [0.9, 0.2], [0.3, 0.7]])
    owner = np.array([0, 0, 1])
    d = direction_scores(sim, owner)
    assert d["t2v"][0] is sim or np.array_equal(d["t2v"][0], sim)
    v2t, targets = d["v2t"]
    # v2t[i, j]: query video i vs candidate video j scored by j's best caption
    np.testing.assert_allclose(v2t, np.array([[0.9, 0.3], [0.8, 0.7]]))
    assert targets.tolist() == [0, 1]
    assert recall_curve(v2t, targets, [1, 2]) == [50.0, 100.0]


def test_vector_error_ignores_padded_rows_and_chunks():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 3, 8)).astype(np.float32)
    a[1, 2] = 0  # a padded frame
    b = a.copy()
    b[4, 0, 0] += 0.01
    err = vector_error(a, b, chunk=2)
    assert err["max_abs"] == pytest.approx(0.01, rel=1e-4)
    assert 0.99 < err["min_cosine"] < 1.0
    assert vector_error(a.astype(np.float16), a.astype(np.float16))["max_abs"] == 0.0


def test_quantised_rule_forgives_a_change_that_tie_flips_explain():
    """The demo's int8 engine lost three top-1s and gained none on 200 queries (ΔR@1 −1.5 against a 1.0 limit):
    three coin tosses landing the same way (p = 0.25) is flip noise; six in a row (p = 0.03) is a regression."""
    from rap_deploy.engines.verify_rules import within_flip_noise

    assert within_flip_noise(3, 0) and within_flip_noise(4, 0) and not within_flip_noise(5, 0)
    assert within_flip_noise(10, 4) and not within_flip_noise(20, 4) and within_flip_noise(0, 0)
    targets = np.array([0, 1, 2, 3])
    ref = np.eye(4) + 0.1
    eng = ref.copy()
    eng[0, 1] = eng[1, 0] = 2.0  # queries 0 and 1 lose their top-1 (to rank 2)
    hits = rank_changes(ref, eng, targets)["hits"]
    assert hits == {"R1": {"lost": 2, "gained": 0}, "R5": {"lost": 0, "gained": 0}, "R10": {"lost": 0, "gained": 0}}

    changes = _changes()
    changes["asa"]["t2v"]["hits"] = {"R1": {"lost": 3, "gained": 0}}
    passed, checks, rule = judge("int8", _deltas(-1.5, ("asa", "t2v", "R1")), changes, tolerance=1.0)
    assert passed and "gained - lost" in rule
    check = next(c for c in checks if c["mode"] == "asa" and c["direction"] == "t2v" and c["metric"] == "R1")
    assert check["flip_noise"] and check["lost"] == 3 and check["gained"] == 0 and check["limit"] == 1.0
    changes["asa"]["t2v"]["hits"] = {"R1": {"lost": 6, "gained": 0}}
    passed, checks, _ = judge("int8", _deltas(-3.0, ("asa", "t2v", "R1")), changes, tolerance=1.0)
    assert not passed and "6 lost / 0 gained" in failure_lines(checks)[0]
    # fp32 keeps its rule: no rank change beyond ties, whatever the flips
    assert not judge("fp32", _deltas(), _changes(1, ("asa", "t2v")))[0]


def test_an_engine_whose_scores_tie_more_often_gets_a_note():
    """Scores rounded to fp16 tie the ground truth with other videos; a tie ranks in its favour, so recall reads
    high. verify says so in a note (the H200 check's PyTorch fp16 finding); an engine as fine as the reference gets
    none."""
    from rap_deploy.engines.verify_rules import tie_notes
    from rap_deploy.metrics import retrieval_metrics

    rng = np.random.default_rng(0)
    caption_video = np.arange(200)
    # close scores, as a weak model's, with the ground truth a little ahead
    reference = (0.7 + 0.01 * rng.standard_normal((200, 200)) + 0.02 * np.eye(200)).astype(np.float32)
    coarse = reference.astype(np.float16).astype(np.float32)
    fine = reference + np.float32(1e-7)

    def sections(engine):
        ref, eng = retrieval_metrics(reference, caption_video), retrieval_metrics(engine, caption_video)
        return {mode: {"reference": ref, "engine": eng} for mode in ("asa", "two_stage")}

    assert tie_notes(sections(fine)) == []
    notes = tie_notes(sections(coarse))
    assert len(notes) == 4 and notes[0].startswith("full ASA t2v: the engine ties the ground truth")
    ref_ties = retrieval_metrics(reference, caption_video)["t2v"]["ties"]
    eng_ties = retrieval_metrics(coarse, caption_video)["t2v"]["ties"]
    assert ref_ties == 0 and eng_ties > 20 and f"on {eng_ties} of 200 queries, the reference on 0" in notes[0]
    coarse_rsum = retrieval_metrics(coarse, caption_video)["t2v"]["RSum"]
    assert coarse_rsum > retrieval_metrics(reference, caption_video)["t2v"]["RSum"]  # the ties read high


def test_the_small_test_set_note_says_what_decides_a_quantised_engine():
    """The note for a test set where one query moves R@K by more than the tolerance said 'a single rank flip across
    a K boundary fails the check'; for an fp16/int8 engine the flip-noise rule passes one (up to four lost and none
    gained), so the note says that rule decides. An fp32 engine held to an explicit --tolerance keeps no flip-noise
    rule: there a single flip does fail."""
    from rap_deploy.engines.verify import explain

    metrics = {"queries": 60, "ties": 0}
    cmp = {"sections": {m: {"reference": {"t2v": metrics, "v2t": metrics}, "engine": {"t2v": metrics, "v2t": metrics}}
                        for m in ("asa", "two_stage")}}
    per_graph = {"video_encoder": {"max_abs": 0.01}}
    changes = _changes()
    changes["asa"]["t2v"]["hits"] = {"R1": {"lost": 1, "gained": 0}}
    passed, checks, _ = judge("int8", _deltas(-100 / 60, ("asa", "t2v", "R1")), changes)
    assert passed  # one query lost on 60: over the 0.5 tolerance, within flip noise
    note = explain(passed, checks, per_graph, cmp, "int8", None)[1][0]
    assert "single rank flip" not in note and "flip-noise" in note and "a tolerance check needs" in note, note
    strict = explain(True, [], per_graph, cmp, "fp32", 0.5)[1][0]
    assert "a single rank flip across a K boundary fails the check" in strict, strict
    assert explain(True, [], per_graph, cmp, "fp32", None)[1] == []  # no tolerance applied: no note
    # --tolerance 0 said 'a tolerance check needs >= 100000000000 queries' (100 / 1e-9): no number of queries helps
    zero = explain(True, [], per_graph, cmp, "int8", 0.0)[1][0]
    assert "needs >=" not in zero and "a tolerance of 0 leaves no change within it" in zero, zero


def test_verify_md_keeps_a_caption_with_a_bar_or_a_line_break_in_its_cell():
    """verify.md's table of changed queries printed each caption as it is, so a caption holding '|' or a line break
    (dataset text) split its row into extra columns or lines; the cell is escaped now."""
    from rap_deploy.engines.reports import METRIC_ROWS, verify_markdown

    metrics = {d: {m: 0.0 for m in METRIC_ROWS} for d in ("t2v", "v2t")}
    example = {"query": 3, "id": "a man | a woman\nsing", "reference_rank": 1, "engine_rank": 2, "within_ties": False}
    result = {"passed": False, "counts": {"videos": 2, "captions": 2, "skipped": 0}, "reference": metrics,
              "engine": metrics, "delta": metrics,
              "rank_changes_detail": {"asa": {"t2v": {"examples": [example], "beyond_ties": 1, "within_ties": 0}}}}
    table = verify_markdown(result).split("## Queries whose rank changed")[1].split("\n\n")[1].splitlines()
    assert len(table) == 3  # header, rule, one row
    assert all(line.replace("\\|", "").count("|") == 8 for line in table), table  # 7 columns
    assert "a man \\| a woman sing" in table[2]


def test_print_verify_shows_a_report_folder_with_brackets_as_it_is():
    """verify printed its report folder through rich markup, so --out 'res[/old]' crashed the finished run with
    rich's MarkupError traceback and 'runs [old]' printed as 'runs '; the text is escaped now."""
    from rich.console import Console

    from rap_deploy.engines.reports import METRIC_ROWS, print_verify

    metrics = {d: {m: 0.0 for m in METRIC_ROWS} for d in ("t2v", "v2t")}
    for out in ("/tmp/res[/old]/v", "/tmp/runs [old]/v"):
        result = {"passed": True, "counts": {"videos": 2, "captions": 2, "skipped": 0}, "reference": metrics,
                  "engine": metrics, "delta": metrics, "rule": "no rank [b]change[/b]", "out": out}
        console = Console(record=True, width=200)
        print_verify(result, console=console)
        text = console.export_text()
        assert f"reports in {out}" in text and "no rank [b]change[/b]" in text


def test_two_stage_similarity_error_leaves_out_pairs_only_one_side_re_ranked():
    """verify's two-stage similarity error compared a pair the reference re-ranked (offset 3 + ASA cosine) with the
    same pair the engine left at stage 1 (its cosine), so every candidate-set change read as an error of about 3
    (reproduced: a damaged fp32 engine, 12 of 12 candidate sets changed, two-stage max abs 3.15 beside full ASA's
    0.09); only pairs both re-ranked or both not are compared now."""
    from rap_deploy.engines.verify_rules import similarity_error

    ref = np.array([[3.5, 3.2, 0.1], [0.3, 3.6, 3.4]])
    eng = np.array([[3.49, 0.2, 3.15], [0.31, 3.6, 3.4]])  # query 0: candidates 1 and 2 swapped places
    err = similarity_error(ref, eng, "two_stage")
    assert err["pairs"] == 4 and err["max_abs"] == pytest.approx(0.01) and err["mean_abs"] == pytest.approx(0.005)
    assert similarity_error(ref, eng, "asa")["max_abs"] == pytest.approx(3.05)  # other modes: every pair

    from types import SimpleNamespace

    from rap_deploy.engines.verify_rules import compare_evaluations
    from rap_deploy.metrics import retrieval_metrics

    split = SimpleNamespace(caption_video=np.array([0, 1]), captions=["a", "b"], num_videos=3,
                            videos=[SimpleNamespace(video_id=f"v{i}") for i in range(3)])

    def evaluation(two_stage):
        sims = {"asa": two_stage - 3.0 * (two_stage > 1.5), "two_stage": two_stage, "meanp": two_stage * 0.0}
        return {**{m: retrieval_metrics(x, split.caption_video) for m, x in sims.items()}, "scores": {"sims": sims}}

    cmp = compare_evaluations(evaluation(ref), evaluation(eng), split, 1e-5)
    assert cmp["candidate_set_changes"] == 1
    assert cmp["sim_error"]["two_stage"]["max_abs"] == pytest.approx(0.01)


def test_verify_png_draws_the_tolerance_band_when_the_engine_is_held_to_it(tmp_path, monkeypatch):
    """verify.png drew the ±tolerance band by the engine's precision string: never for an fp32 engine verified with
    --tolerance (held to it, besides its rank rule), always for any other string. The checks decide now."""
    from matplotlib.axes import Axes

    from rap_deploy.engines.reports import plot_verify

    drawn: list[float] = []
    real = Axes.axhline
    monkeypatch.setattr(Axes, "axhline", lambda self, y=0, *a, **k: drawn.append(y) or real(self, y, *a, **k))
    curves = {"ks": [1, 2], **{m: {w: {"t2v": [50.0, 100.0], "v2t": [50.0, 100.0]} for w in ("reference", "engine")}
                               for m in ("asa", "two_stage")}}
    tolerance_check = {"mode": "asa", "direction": "t2v", "metric": "R1", "value": 0.0, "limit": 1.0, "passed": True}
    rank_check = {**tolerance_check, "metric": "rank_changes", "limit": 0}
    for checks, band in (([tolerance_check, rank_check], True), ([rank_check], False)):
        drawn.clear()
        plot_verify({"passed": True, "tolerance": 1.0, "recall_curves": curves, "checks": checks,
                     "engine_info": {"precision": "fp32"}}, tmp_path / "verify.png")
        assert (1.0 in drawn and -1.0 in drawn) is band, drawn


def test_a_two_stage_candidate_set_that_a_stage_1_near_tie_changes_is_a_tie():
    """An fp32 engine whose stage-1 cosine differs from the reference's by 1e-7 at the top-M boundary re-ranks
    another video; when that video's ASA score beats the ground truth's, the ground truth moves one place, which
    counted as a rank change beyond ties and failed the fp32 rule though every score agrees within 1e-7. A stage-1
    gap as wide as a real one still counts."""
    from types import SimpleNamespace

    from rap_deploy.engines.verify_rules import compare_evaluations
    from rap_deploy.metrics import retrieval_metrics
    from rap_deploy.retrieval import RERANK_OFFSET

    split = SimpleNamespace(caption_video=np.array([0, 1]), captions=["a", "b"], num_videos=4,
                            videos=[SimpleNamespace(video_id=f"v{i}") for i in range(4)])
    asa = np.array([[0.6, 0.2, 0.7, 0.1], [0.1, 0.8, 0.2, 0.3]])

    def evaluation(stage1: np.ndarray, top_m: int = 2) -> dict:
        two_stage = stage1.astype(np.float64)
        for q in range(len(stage1)):  # as two_stage_similarity: the top-M by stage 1 lifted to offset + ASA
            cands = np.argsort(-stage1[q], kind="stable")[:top_m]
            two_stage[q, cands] = RERANK_OFFSET + asa[q, cands]
        sims = {"asa": asa, "two_stage": two_stage, "meanp": stage1}
        return {**{m: retrieval_metrics(x, split.caption_video) for m, x in sims.items()}, "scores": {"sims": sims}}

    ref = np.array([[0.5, 0.3, 0.3 - 1e-7, 0.1], [0.2, 0.6, 0.1, 0.4]])
    near = ref.copy()
    near[0, 1:3] = [0.3 - 1e-7, 0.3]  # videos 1 and 2 swap places at the boundary: video 2 (ASA 0.7) is re-ranked
    cmp = compare_evaluations(evaluation(ref), evaluation(near), split, 1e-5)
    assert cmp["candidate_set_changes"] == 1
    t2v = cmp["changes"]["two_stage"]["t2v"]
    assert (t2v["changed"], t2v["within_ties"], t2v["beyond_ties"]) == (1, 1, 0)  # rank 1 -> 2, a stage-1 tie
    assert all(c["beyond_ties"] == 0 for c in cmp["changes"]["two_stage"].values())
    passed, _, _ = judge("fp32", {m: cmp["sections"][m]["delta"] for m in ("asa", "two_stage")},
                         {m: cmp["changes"][m] for m in ("asa", "two_stage")})
    assert passed
    apart, far = ref.copy(), ref.copy()
    apart[0, 1:3], far[0, 1:3] = [0.3, 0.25], [0.25, 0.3]  # the same swap across a 0.05 gap: a real change
    cmp = compare_evaluations(evaluation(apart), evaluation(far), split, 1e-5)
    assert cmp["changes"]["two_stage"]["t2v"]["beyond_ties"] == 1


def test_a_changed_video_to_text_query_is_named_by_its_own_video_when_a_video_has_no_caption():
    """Video→text queries are the videos that have a caption; the rank-change examples named query q by the q-th video
    of the split, so with a caption-less video (an MSVD entry with an empty caption list) ahead of it a changed query
    was reported under its neighbour's id."""
    from types import SimpleNamespace

    from rap_deploy.engines.verify_rules import compare_evaluations
    from rap_deploy.metrics import retrieval_metrics

    split = SimpleNamespace(caption_video=np.array([1, 2]), captions=["b", "c"], num_videos=3,
                            videos=[SimpleNamespace(video_id=f"v{i}") for i in range(3)])  # v0: no caption
    ref = np.array([[0.1, 0.9, 0.2], [0.1, 0.3, 0.8]])
    eng = np.array([[0.1, 0.9, 0.2], [0.1, 0.3, 0.15]])  # video v2 now ranks caption "b" (0.2) above its own

    def evaluation(sim):
        sims = {"asa": sim, "two_stage": sim, "meanp": sim}
        return {**{m: retrieval_metrics(x, split.caption_video) for m, x in sims.items()}, "scores": {"sims": sims}}

    cmp = compare_evaluations(evaluation(ref), evaluation(eng), split, 1e-5)
    (example,) = cmp["changes"]["asa"]["v2t"]["examples"]
    assert (example["query"], example["id"], example["reference_rank"], example["engine_rank"]) == (1, "v2", 1, 2)


@pytest.mark.parametrize(("engine", "recorded"), [
    ("http://127.0.0.1:8080", "the server publishes with its models"),
    ("/x/engines/onnxruntime-fp32", "the engine's manifest records"),
])
def test_a_foreign_checkpoint_refusal_says_where_the_engines_source_is_recorded(engine, recorded):
    """``verify --engine http://HOST:PORT --checkpoint OTHER.pt`` was refused as differing from 'the one the engine's
    manifest records', though a server has no manifest a user can open: its source is the sha256 it publishes with
    its models. The refusal now says which, and shows both sha256."""
    from pathlib import Path

    from rap_deploy.engines.engine_refs import Reference
    from rap_deploy.engines.verify import _refuse_foreign_checkpoint
    from rap_deploy.errors import UsageError

    ref = Reference(Path("other.pt"), "a" * 64, "b" * 64, "--checkpoint")
    with pytest.raises(UsageError) as err:
        _refuse_foreign_checkpoint(ref, engine)
    message = str(err.value)
    assert f"sha256 aaaaaaaaaaaa… differs from bbbbbbbbbbbb…, the one {recorded}" in message, message
    assert ("manifest" in message) == ("manifest" in recorded)
    _refuse_foreign_checkpoint(Reference(Path("same.pt"), "b" * 64, "b" * 64, "--checkpoint"), engine)


@pytest.mark.parametrize("recorded", ["~rapdeploy_no_such_user/micro.pt", "~/micro.pt", "/" + "d" * 300 + "/micro.pt"])
def test_a_manifests_checkpoint_path_is_taken_as_written(recorded, tmp_path, monkeypatch):
    """The source checkpoint an engine's (untrusted) manifest records is read as written, as the export manifest's
    is: '~nosuchuser/…' was expanded through user_path and refused as a path the user typed ('write the full path
    without ~…'), '~/…' was opened in this user's home, and a name too long for the file system escaped as an
    OSError. Each is now the refusal every unusable recorded path gets (exit 2, pass --checkpoint)."""
    import json

    from rap_deploy.engines.engine_refs import resolve_reference
    from rap_deploy.errors import UsageError

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "micro.pt").write_bytes(b"a checkpoint in the home folder")
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "manifest.json").write_text(json.dumps({"checkpoint": {"path": recorded, "sha256": "0" * 64}}))
    with pytest.raises(UsageError) as refused:
        resolve_reference(engine, None)
    assert str(refused.value) == (f"the engine's source checkpoint {recorded!r} (from {engine / 'manifest.json'}) is "
                                  "not an existing checkpoint file here; pass --checkpoint with the .pt it was "
                                  "exported from")
    assert refused.value.exit_code == 2
