"""Claims an export or engine folder makes that a review found unchecked: an export whose parity record is missing or
failed was built into an engine; an engine manifest without one of its model's graphs was refused as bad usage
(exit 2) naming neither the file nor the fix; a thread count an engine manifest recorded was applied as given (4096
threads hung every command on 2 cores); a checkpoint named ``..pt`` wrote its verify report into the workspace
root."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app

runner = CliRunner()


def _edit_json(path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _set_passed_false(key=None):
    def edit(data):
        (data[key] if key else data)["passed"] = False
    return edit


@pytest.mark.parametrize("tamper", ["no parity.json", "manifest says failed", "parity.json says failed"])
def test_build_engine_refuses_an_export_whose_parity_did_not_pass(micro_ort_engines, tmp_path, tamper):
    export = tmp_path / "export"
    shutil.copytree(micro_ort_engines["export"], export)
    if tamper == "no parity.json":
        (export / "parity.json").unlink()
    elif tamper == "manifest says failed":
        _edit_json(export / "manifest.json", _set_passed_false("parity"))
    else:
        _edit_json(export / "parity.json", _set_passed_false())
    res = runner.invoke(app, ["build-engine", str(export), "--out", str(tmp_path / "engine"), "--quiet"])
    assert res.exit_code == 1, res.output
    assert "an export whose parity check did not pass cannot be built or verified" in res.output
    assert "rapdeploy export" in res.output and "--force --out" in res.output
    assert not (tmp_path / "engine").exists()


def test_an_engine_manifest_without_a_graph_is_damaged_and_names_the_rebuild(micro_ort_engines, tmp_path):
    engine = tmp_path / "engine"
    shutil.copytree(micro_ort_engines["fp32"], engine)
    _edit_json(engine / "manifest.json", lambda m: m["graphs"].pop("asa_head"))
    res = runner.invoke(app, ["bench", "--engine", str(engine), "--graphs", "text", "--batch-sizes", "1",
                              "--out", str(tmp_path / "bench"), "--quiet"])
    assert res.exit_code == 1, res.output
    assert f"{engine / 'manifest.json'} lists graphs ['text_encoder', 'video_encoder'], but its config's model runs " \
           "['asa_head', 'text_encoder', 'video_encoder']" in res.output
    assert "rapdeploy build-engine" in res.output and "--force --out" in res.output


def test_a_recorded_thread_count_is_held_to_this_machines_cores(micro_ort_engines, tmp_path):
    from rap_deploy.engines import load_engine
    from rap_deploy.engines.machine_load import usable_cpus

    engine = tmp_path / "engine"
    shutil.copytree(micro_ort_engines["fp32"], engine)
    _edit_json(engine / "manifest.json", lambda m: m["session"].update(threads=64, inter_threads=64))
    cores = len(usable_cpus())
    loaded = load_engine(engine)
    assert (loaded.threads, loaded.inter_threads) == (cores, cores)
    assert load_engine(engine, threads=1).threads == 1  # a command's own --threads is used as given


def test_a_checkpoint_named_dots_keeps_its_verify_report_in_verify(micro_checkpoint, synth_root, tmp_path):
    from rap_deploy.engines.report_labels import engine_label, escape_name

    assert [escape_name(n) for n in (".", "..", "...", ".a", "a..")] == ["%2E", "%2E%2E", "%2E%2E%2E", ".a", "a.."]
    checkpoint = tmp_path / "..pt"
    shutil.copy(micro_checkpoint, checkpoint)
    assert engine_label(checkpoint) == "%2E"
    workspace = tmp_path / "ws"
    res = runner.invoke(app, ["verify", "--dataset", "msrvtt", "--data-root", str(synth_root), "--engine",
                              str(checkpoint), "--workspace", str(workspace), "--max-videos", "4", "--quiet"])
    assert res.exit_code == 0, res.output
    assert (workspace / "verify" / "%2E" / "verify.json").is_file()
    assert not (workspace / "verify" / "verify.json").exists() and not (workspace / "verify.json").exists()
