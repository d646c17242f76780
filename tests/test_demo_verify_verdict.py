"""The demo reads each engine's verify.json: an engine whose parity held but whose verify failed because test videos
were missing or undecodable (ae689c1) is not reported as a parity failure."""

from __future__ import annotations

import json

from rap_deploy.cli import pipeline
from rap_deploy.cli.demo_steps import Steps
from rap_deploy.cli.demo_world import World


def _verify_json(passed: bool, parity_passed: bool) -> dict:
    metrics = {d: {"R1": 0.0, "R5": 0.0} for d in ("t2v", "v2t")}
    return {"passed": passed, "parity_passed": parity_passed, "tolerance": None, "delta": metrics,
            "two_stage": {"delta": metrics}, "rank_changes": {"t2v": 0, "v2t": 0}, "rank_changes_detail": {}}


def test_demo_names_skipped_videos_not_parity_when_parity_held(tmp_path, monkeypatch):
    """Before: every engine whose verify.json said passed false was 'parity failed for NAME', also when parity held
    and verify failed only because test videos were left out, which is what the demo then told the user to look
    into. Now the verdict keeps parity_passed and the message tells the two apart."""
    reports = {"onnxruntime-fp32": _verify_json(False, True), "onnxruntime-int8": _verify_json(False, False)}

    def fake_verify(dataset, data, engine, out, **kw):
        out.mkdir(parents=True, exist_ok=True)
        (out / "verify.json").write_text(json.dumps(reports[engine.name]))

    monkeypatch.setattr("rap_deploy.engines.verify.verify", fake_verify)
    world = World(data=tmp_path / "data", backbone=tmp_path / "backbone.safetensors", frame_cache=tmp_path / "frames")
    run = pipeline._DemoRun(out=tmp_path, sizes=pipeline.DemoSizes.tiny(), steps=Steps(lambda msg: None),
                            world=world, progress=False, threads=None, log=lambda msg: None)
    verdicts = pipeline._verify_steps(run, list(reports))
    assert [(v["passed"], v["parity_passed"]) for v in verdicts] == [(False, True), (False, False)]

    message = pipeline.verify_failure([v for v in verdicts if not v["passed"]], tmp_path / "verify", world.data)
    assert message.startswith("parity failed for onnxruntime-int8; verify of onnxruntime-fp32 did not pass: parity "
                              "held, but over fewer test videos than the split lists")
    assert f"delete {world.data}" in message and f"delete {tmp_path / 'verify'}" in message
    only_skipped = pipeline.verify_failure(verdicts[:1], tmp_path / "verify", world.data)
    assert "parity failed" not in only_skipped


def test_a_verify_json_from_before_parity_passed_reads_as_its_passed(tmp_path):
    """verify.json written before parity_passed existed: its passed was the parity verdict."""
    failed = [{"name": "onnxruntime-fp32", "passed": False}]
    assert pipeline.verify_failure(failed, tmp_path / "verify", tmp_path / "data") == (
        f"parity failed for onnxruntime-fp32; see {tmp_path / 'verify'}")
