"""``rapdeploy build-engine`` through the real CLI."""

from __future__ import annotations

import json
import re
import shlex
import shutil

from typer.testing import CliRunner

from rap_deploy.cli.app import app

runner = CliRunner()


def test_fp16_without_tensorrt_exits_2_with_one_clear_line(micro_ort_engines, tmp_path):
    result = runner.invoke(app, ["build-engine", str(micro_ort_engines["export"]), "--fp16", "--out",
                                 str(tmp_path / "trt")])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "TensorRT is not installed" in lines[0] and "--backend onnxruntime" in lines[0]
    assert not (tmp_path / "trt").exists()


def _named_commands(message: str) -> list[list[str]]:
    """The `rapdeploy build-engine ...` commands a message names (between backticks), split into words."""
    return [shlex.split(part) for part in message.split("`") if part.startswith("rapdeploy build-engine")]


def test_fp16_without_tensorrt_names_the_real_export_folder(micro_ort_engines, tmp_path):
    """The refusal said `rapdeploy build-engine EXPORT_DIR --backend onnxruntime`, a placeholder, though the export
    folder was known; both commands it names now carry that folder and build the CPU fp32 and int8 engines."""
    from rap_deploy.engines.build import resolve_target

    ws = tmp_path / "my ws"
    export = ws / "onnx" / "micro"
    shutil.copytree(micro_ort_engines["export"], export)
    for args in ([str(export)], ["--workspace", str(ws)]):  # named, and the workspace's latest export
        result = runner.invoke(app, ["build-engine", *args, "--fp16", "--out", str(tmp_path / "trt")])
        assert result.exit_code == 2, result.output
        assert "EXPORT_DIR" not in result.stderr
        commands = _named_commands(" ".join(result.stderr.split()))  # Rich may wrap the line
        assert [words[2] for words in commands] == [str(export), str(export)], result.stderr
        assert [resolve_target(w[w.index("--backend") + 1] if "--backend" in w else None, "--fp16" in w,
                               "--int8" in w, None) for w in commands] == [("onnxruntime", "fp32", "cpu"),
                                                                           ("onnxruntime", "int8", "cpu")]


def test_int8_build_from_the_workspace_latest_export(micro_ort_engines, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(micro_ort_engines["export"], ws / "onnx" / "micro")
    result = runner.invoke(app, ["build-engine", "--int8", "--workspace", str(ws), "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    engine_dir = ws / "engines" / "onnxruntime-int8"
    assert manifest["dir"] == str(engine_dir.resolve()) and manifest["precision"] == "int8"
    assert manifest["validation"]["passed"] and manifest["validation"]["text_emb"]["min_cosine"] >= 0.99
    assert sorted(p.name for p in engine_dir.iterdir()) == ["asa_head.onnx", "manifest.json", "text_encoder.onnx",
                                                           "video_encoder.onnx"]
    again = runner.invoke(app, ["build-engine", "--int8", "--workspace", str(ws)])
    assert again.exit_code == 2 and "--force" in again.stderr


def test_a_missing_cuda_provider_gives_the_readme_wheel_swap(micro_ort_engines, tmp_path, monkeypatch):
    """The hint said `pip uninstall onnxruntime && pip install -e '.[gpu]'`, which installs the CPU wheel (a base
    dependency) again beside onnxruntime-gpu, both providing the onnxruntime module; it now gives the README's swap
    with the gpu extra's pin."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    res = runner.invoke(app, ["build-engine", str(micro_ort_engines["export"]), "--device", "cuda",
                              "--out", str(tmp_path / "cuda")])
    assert res.exit_code == 2 and ".[gpu]" not in res.stderr, res.output
    assert re.search(r"pip uninstall -y onnxruntime && pip install onnxruntime-gpu==\d", res.stderr), res.output


def test_bad_usage_exits_2(micro_ort_engines, tmp_path):
    empty = runner.invoke(app, ["build-engine", "--workspace", str(tmp_path / "empty")])
    assert empty.exit_code == 2 and "no export found" in empty.stderr
    both = runner.invoke(app, ["build-engine", str(micro_ort_engines["export"]), "--fp16", "--int8"])
    assert both.exit_code == 2 and "exclude each other" in both.stderr
    cuda = runner.invoke(app, ["build-engine", str(micro_ort_engines["export"]), "--device", "cuda",
                               "--out", str(tmp_path / "cuda")])
    assert cuda.exit_code == 2 and "CUDAExecutionProvider" in cuda.stderr
    profile = runner.invoke(app, ["build-engine", str(micro_ort_engines["export"]), "--min-batch", "8",
                                  "--max-batch", "2", "--out", str(tmp_path / "p")])
    assert profile.exit_code == 2 and "min <= opt <= max" in profile.stderr


def test_session_and_asa_block_options_reach_the_engine(micro_ort_engines, tmp_path):
    """--threads, --inter-threads, --query-block and --video-block are the engine's settings, read back at load;
    --no-validate builds without the PyTorch comparison (no test passed any of them but --no-validate)."""
    from rap_deploy.engines.loader import load_engine

    out = tmp_path / "engine"
    result = runner.invoke(app, ["build-engine", str(micro_ort_engines["export"]), "--out", str(out), "--threads",
                                 "1", "--inter-threads", "2", "--query-block", "5", "--video-block", "7",
                                 "--no-validate", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["session"]["threads"] == 1 and manifest["session"]["inter_threads"] == 2
    assert manifest["asa_blocks"] == {"queries": 5, "videos": 7}
    assert "validation" not in manifest
    engine = load_engine(out)
    try:
        assert (engine.query_block, engine.video_block) == (5, 7)
        assert (engine.threads, engine.inter_threads) == (1, 2)
    finally:
        engine.close()


def test_profile_options_reach_the_tensorrt_profiles(micro_ort_engines, tmp_path):
    """--min-batch, --opt-batch and --max-batch are the encoders' batch profile, --query-block and --video-block the
    ASA head's (TensorRT API-surface fake: the CLI's mapping of the options, which no other test passes through)."""
    from conftest import fake_tensorrt_env

    out = tmp_path / "tensorrt-fp32"
    with fake_tensorrt_env(10):
        result = runner.invoke(app, ["build-engine", str(micro_ort_engines["export"]), "--backend", "tensorrt",
                                     "--out", str(out), "--min-batch", "2", "--opt-batch", "3", "--max-batch", "6",
                                     "--query-block", "5", "--video-block", "7", "--no-validate", "--quiet",
                                     "--json"])
    assert result.exit_code == 0, result.output
    profiles = json.loads(result.stdout)["profiles"]
    for graph in ("video_encoder", "text_encoder"):
        assert profiles[graph]["batch"] == {"min": 2, "opt": 3, "max": 6}, profiles[graph]
    assert profiles["asa_head"]["queries"]["max"] == 5 and profiles["asa_head"]["videos"]["max"] == 7, profiles


def test_a_thread_count_that_is_none_is_refused_by_every_command_that_takes_one(tmp_path):
    """build-engine's --threads/--inter-threads, verify's and bench's --threads: 0 or past bounds.MAX_THREADS is one
    line naming the option (exit 2) before any work, as the other commands say it (bounds.check_threads)."""
    import pytest

    from rap_deploy import bounds
    from rap_deploy.errors import UsageError

    for args in (["build-engine", str(tmp_path / "export"), "--threads", "0"],
                 ["build-engine", str(tmp_path / "export"), "--inter-threads", "0"],
                 ["verify", "--dataset", "msrvtt", "--engine", str(tmp_path / "engine"), "--threads", "0"],
                 ["bench", "--engine", str(tmp_path / "engine"), "--threads", str(bounds.MAX_THREADS + 1)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and args[-2] in result.stderr and "Traceback" not in result.output, args
    assert bounds.check_threads(None) is None and bounds.check_threads(2) == 2
    with pytest.raises(UsageError, match="--inter-threads"):
        bounds.check_threads(-1, "--inter-threads")


def test_a_refused_bench_verify_or_export_leaves_no_workspace_behind(micro_checkpoint, tmp_path, monkeypatch):
    """`rapdeploy bench --engine MISSING` made ./rapdeploy-out (the report folder's writability check, which makes its
    parents) before it refused the engine; verify did it for an unloadable engine or data root, export for a missing,
    damaged or foreign checkpoint and a wrong --data-root. Each now reads its inputs before the output folder."""
    home = tmp_path / "home"
    monkeypatch.setenv("RAPDEPLOY_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    garbage, empty = tmp_path / "garbage.pt", tmp_path / "empty-data"
    garbage.write_bytes(b"not a checkpoint")
    empty.mkdir()
    cases = (["bench", "--engine", str(tmp_path / "missing")], ["bench", "--checkpoint", str(garbage)],
             ["bench", "--checkpoint", str(micro_checkpoint), "--data-root", str(empty)],
             ["verify", "--dataset", "msrvtt", "--data-root", str(empty), "--engine", str(garbage)],
             ["verify", "--dataset", "msrvtt", "--data-root", str(empty), "--engine", str(micro_checkpoint)],
             ["export", str(tmp_path / "missing.pt")], ["export", str(garbage)],
             ["export", str(micro_checkpoint), "--data-root", str(empty)])
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "Traceback" not in result.output, (args, result.output)
        assert not home.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["empty-data", "garbage.pt"], args


def test_an_export_missing_a_graph_names_a_reexport_command_that_runs(micro_ort_engines, micro_checkpoint, tmp_path):
    import shlex

    export = tmp_path / "onnx"
    shutil.copytree(micro_ort_engines["export"], export)
    (export / "asa_head.onnx").unlink()
    result = runner.invoke(app, ["build-engine", str(export), "--out", str(tmp_path / "e")])
    assert result.exit_code == 1, result.output
    said = " ".join(result.stderr.split())  # was: "re-run `rapdeploy export --force --out ...`": no checkpoint
    command = f"rapdeploy export {micro_checkpoint} --force --out {export}"
    # was: "{file} (graphs 'asa_head') is missing; re-run ...": the manifest's section name, ungrammatical
    assert (f"export file {export / 'asa_head.onnx'} is missing: {export / 'manifest.json'} lists it as the "
            f"'asa_head' graph; write the export again with `{command}`") in said, said
    rerun = runner.invoke(app, [*shlex.split(command)[1:], "--quiet"])
    assert rerun.exit_code == 0, rerun.output
    assert runner.invoke(app, ["build-engine", str(export), "--out", str(tmp_path / "e"), "--quiet"]).exit_code == 0

    manifest = json.loads((export / "manifest.json").read_text())  # a source checkpoint that is not here
    manifest["checkpoint"]["path"] = str(tmp_path / "gone.pt")
    (export / "manifest.json").write_text(json.dumps(manifest))
    (export / "text_encoder.onnx").write_bytes(b"x")
    result = runner.invoke(app, ["build-engine", str(export), "--out", str(tmp_path / "e2")])
    assert result.exit_code == 1, result.output
    assert f"run `rapdeploy export CKPT --force --out {export}`" in " ".join(result.stderr.split())


def _as_before_asa_tokens(folder, record_sections):
    """Make ``folder``'s video_encoder what rapdeploy wrote before the ``asa_tokens`` output (issue 11): the graph
    without that output (and its ``rapdeploy.io`` copy), the manifest's sha256, size and I/O records to match."""
    import onnx

    from rap_deploy.atomic import sha256_file

    path = folder / "video_encoder.onnx"
    model = onnx.load(str(path))
    kept = [o for o in model.graph.output if o.name != "asa_tokens"]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    for prop in model.metadata_props:
        if prop.key == "rapdeploy.io":
            io = json.loads(prop.value)
            io["outputs"] = [o for o in io["outputs"] if o["name"] != "asa_tokens"]
            prop.value = json.dumps(io)
    onnx.save(model, str(path))
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["graphs"]["video_encoder"]
    entry["sha256"], entry["bytes"] = sha256_file(path), path.stat().st_size
    for section in record_sections:
        record = section(manifest)["graphs"]["video_encoder"]
        record["outputs"] = [o for o in record["outputs"] if o["name"] != "asa_tokens"]
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_an_export_or_engine_of_another_version_is_refused_with_the_rebuild(micro_ort_engines, micro_checkpoint,
                                                                           synth_root, tmp_path):
    export, engine = tmp_path / "onnx", tmp_path / "engine"
    shutil.copytree(micro_ort_engines["export"], export)
    shutil.copytree(micro_ort_engines["fp32"], engine)
    _as_before_asa_tokens(export, [lambda m: m])
    _as_before_asa_tokens(engine, [lambda m: m["export"]])
    said = "gives video_emb, frame_emb, patch_tokens where this rapdeploy reads video_emb, frame_emb, patch_tokens, " \
           "asa_tokens"
    result = runner.invoke(app, ["build-engine", str(export), "--out", str(tmp_path / "e")])
    assert result.exit_code == 2, result.output  # was: a ValueError traceback from the validation (exit 1)
    line = " ".join(result.stderr.split())
    assert f"graph 'video_encoder' (video_encoder.onnx) {said}: the export was written by another version of " \
           f"rapdeploy; re-export it with this one: `rapdeploy export {micro_checkpoint} --force --out {export}`" \
           in line, line
    assert not (tmp_path / "e").exists()
    source = json.loads((engine / "manifest.json").read_text())["export_dir"]
    for command in (["verify", "--dataset", "msrvtt", "--data-root", str(synth_root), "--engine", str(engine)],
                    ["bench", "--engine", str(engine), "--batch-sizes", "1", "--graphs", "video"]):
        result = runner.invoke(app, command)  # was: verify 'the video encoder returned 3 outputs' (exit 1); bench 0
        assert result.exit_code == 2, (command, result.output)
        line = " ".join(result.stderr.split())
        assert f"engine graph 'video_encoder' {said}: the engine was built by another version of rapdeploy; rebuild " \
               f"it with this one from a fresh export: `rapdeploy export {micro_checkpoint} --force --out {source}` " \
               f"then `rapdeploy build-engine {source} --force --out {engine}`" in line, line


def test_an_export_or_engine_of_a_newer_format_names_both_versions_and_the_rebuild(micro_ort_engines,
                                                                                    micro_checkpoint, tmp_path):
    export, engine = tmp_path / "onnx", tmp_path / "engine"
    shutil.copytree(micro_ort_engines["export"], export)
    shutil.copytree(micro_ort_engines["fp32"], engine)
    for folder, versions in ((export, lambda m: m), (engine, lambda m: m["versions"])):
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["format_version"] = 2
        versions(manifest)["rapdeploy"] = "9.0.0"
        (folder / "manifest.json").write_text(json.dumps(manifest))
    from rap_deploy import __version__

    result = runner.invoke(app, ["build-engine", str(export), "--out", str(tmp_path / "e")])
    assert result.exit_code == 2, result.output  # was: "... has export format 2; upgrade rapdeploy"
    assert f"{export / 'manifest.json'} has export format 2 (written by rapdeploy 9.0.0), newer than the format 1 " \
           f"this rapdeploy {__version__} reads; upgrade rapdeploy, or re-create it with this one: `rapdeploy export " \
           f"{micro_checkpoint} --force --out {export}`" in " ".join(result.stderr.split()), result.output
    source = json.loads((engine / "manifest.json").read_text())["export_dir"]
    result = runner.invoke(app, ["bench", "--engine", str(engine), "--batch-sizes", "1", "--graphs", "text"])
    assert result.exit_code == 2, result.output
    assert f"has engine format 2 (written by rapdeploy 9.0.0), newer than the format 1 this rapdeploy {__version__} " \
           f"reads; upgrade rapdeploy, or re-create it with this one: `rapdeploy build-engine {source} --force --out " \
           f"{engine}`" in " ".join(result.stderr.split()), result.output


def test_build_engine_of_a_folder_that_does_not_exist_says_so(tmp_path):
    missing = tmp_path / "onxx"  # a typo of the export folder
    result = runner.invoke(app, ["build-engine", str(missing), "--out", str(tmp_path / "e")])
    assert result.exit_code == 2, result.output  # was: "... has no manifest.json; run `rapdeploy export ...`"
    assert " ".join(result.stderr.split()) == f"error: export folder {missing} does not exist; pass the folder " \
                                              f"`rapdeploy export` wrote, or write it with `rapdeploy export CKPT " \
                                              f"--out {missing}`"
    assert not (tmp_path / "e").exists()


def test_a_graph_that_disagrees_with_its_own_manifest_stays_an_edited_export(micro_ort_engines, tmp_path):
    """The contract check (another version, exit 2) comes after the manifest's own claims: a graph whose outputs
    differ from what its manifest records was edited (exit 1), whatever version wrote it."""
    export = tmp_path / "onnx"
    shutil.copytree(micro_ort_engines["export"], export)
    recorded = json.loads((export / "manifest.json").read_text())["graphs"]["video_encoder"]["outputs"]
    _as_before_asa_tokens(export, [])  # the graph (and its sha256) changed, the manifest's I/O record not
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["graphs"]["video_encoder"]["outputs"] == recorded
    result = runner.invoke(app, ["build-engine", str(export), "--out", str(tmp_path / "e")])
    assert result.exit_code == 1, result.output
    assert "does not match its manifest" in result.stderr and "another version" not in result.stderr
