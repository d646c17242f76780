"""``rapdeploy triton-repo``: every generated ``config.pbtxt`` parses with Triton's own schema
(``tritonclient.grpc.model_config_pb2`` + protobuf ``text_format``) and matches the ONNX graph it serves: input and
output names, ``TYPE_*`` datatypes, dims; platforms, model files, batch sizes from the engine's profiles."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from typer.testing import CliRunner

from rap_deploy.cli import app
from rap_deploy.engines.manifest import cpu_layout

runner = CliRunner()
ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                  onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.INT64: "TYPE_INT64"}
GRAPHS = ("video_encoder", "text_encoder", "asa_head")


def _config(repo, graph) -> mc.ModelConfig:
    return text_format.Parse((repo / graph / "config.pbtxt").read_text(), mc.ModelConfig())


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cross_check(cfg: mc.ModelConfig, graph_file) -> None:
    """The config's inputs/outputs are the ONNX graph's, name for name, type for type, dim for dim."""
    model = onnx.load(str(graph_file), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    for declared, values in ((cfg.input, [v for v in model.graph.input if v.name not in init]),
                             (cfg.output, list(model.graph.output))):
        assert [t.name for t in declared] == [v.name for v in values]
        for t, v in zip(declared, values, strict=True):
            assert mc.DataType.Name(t.data_type) == ONNX_TO_TRITON[v.type.tensor_type.elem_type], t.name
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
            assert list(t.dims), t.name  # Triton refuses a tensor with empty dims
            if cfg.max_batch_size > 0 and dims[1:]:
                assert dims[0] == -1 and list(t.dims) == dims[1:], t.name
            elif cfg.max_batch_size > 0:  # the batch axis alone (eot): dims [1] reshaped to none, Triton's recipe
                assert dims == [-1] and list(t.dims) == [1] and t.HasField("reshape") and not t.reshape.shape, t.name
            else:
                assert list(t.dims) == dims, t.name


def test_onnxruntime_engine_repository(micro_ort_engines, tmp_path):
    engine = micro_ort_engines["fp32"]
    repo = tmp_path / "repo"
    res = runner.invoke(app, ["triton-repo", "--engine", str(engine), "--out", str(repo), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["platform"] == "onnxruntime_onnx" and summary["kind"] == "cpu"
    manifest = json.loads((engine / "manifest.json").read_text())
    for graph, batch in zip(GRAPHS, (32, 128, 0), strict=True):
        cfg = _config(repo, graph)
        assert (cfg.name, cfg.platform, cfg.max_batch_size) == (graph, "onnxruntime_onnx", batch)
        model_file = repo / graph / "1" / "model.onnx"
        assert _sha(model_file) == manifest["graphs"][graph]["sha256"]
        _cross_check(cfg, model_file)
        assert cfg.HasField("dynamic_batching") == (batch > 0)
        if batch:
            assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
        assert [(g.kind, g.count) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        assert json.loads(params["rapdeploy.config"]) == manifest["config"]
        assert params["rapdeploy.precision"] == "fp32"
        assert json.loads(params["rapdeploy.checkpoint"])["sha256"] == manifest["checkpoint"]["sha256"]
        assert json.loads(params["rapdeploy.asa_blocks"]) == {"queries": 32, "videos": 64}
    readme = (repo / "README.md").read_text()
    assert f"tritonserver --model-repository={repo.resolve()}" in readme
    # a CPU engine's graphs hold the building CPU's NCHWc filter blocks: Triton on another kind of CPU would read
    # other weights silently (load_engine refuses such a CPU; Triton cannot), so the README says which CPU it needs
    machine, avx512 = cpu_layout(manifest["host"])
    assert f"({machine}, {'with' if avx512 else 'without'} AVX-512)" in readme and "NCHWc" in readme
    assert "rapdeploy verify --engine http://localhost:8000" in readme
    # an existing repository is only replaced with --force
    res = runner.invoke(app, ["triton-repo", "--engine", str(engine), "--out", str(repo)])
    assert res.exit_code == 2 and "--force" in res.output
    res = runner.invoke(app, ["triton-repo", "--engine", str(engine), "--out", str(repo), "--force",
                              "--kind", "cpu", "--instances", "2"])
    assert res.exit_code == 0, res.output
    assert [(g.kind, g.count) for g in _config(repo, "asa_head").instance_group] == [(mc.ModelInstanceGroup.KIND_CPU,
                                                                                      2)]
    assert not list(tmp_path.glob(".repo.partial-*"))


def test_export_folder_repository_fp16(micro_checkpoint, micro_ort_engines, tmp_path):
    from rap_deploy.export import export_checkpoint

    res = runner.invoke(app, ["triton-repo", "--engine", str(micro_ort_engines["export"]), "--out",
                              str(tmp_path / "none"), "--fp16"])
    assert res.exit_code == 2 and "--fp16" in res.output  # an export without fp16 graphs
    export = tmp_path / "export16"
    export_checkpoint(micro_checkpoint, export, fp16=True, progress=False)
    manifest = json.loads((export / "manifest.json").read_text())
    repo = tmp_path / "repo16"
    res = runner.invoke(app, ["triton-repo", "--engine", str(export), "--out", str(repo), "--fp16"])
    assert res.exit_code == 0, res.output
    for graph in GRAPHS:
        cfg = _config(repo, graph)
        assert cfg.platform == "onnxruntime_onnx"
        model_file = repo / graph / "1" / "model.onnx"
        assert _sha(model_file) == manifest["fp16_graphs"][graph]["sha256"]
        _cross_check(cfg, model_file)  # the fp16 graphs keep fp32 inputs and outputs
        assert cfg.parameters["rapdeploy.precision"].string_value == "fp16"
        assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]  # was KIND_CPU: a crash
    res = runner.invoke(app, ["triton-repo", "--engine", str(export), "--out", str(tmp_path / "cpu16"), "--fp16",
                              "--kind", "cpu"])
    assert res.exit_code == 2 and "segfault" in res.output and not (tmp_path / "cpu16").exists(), res.output


def test_graphs_that_run_on_the_gpu_only_get_no_cpu_instances(micro_ort_engines, tmp_path):
    """--kind cpu wrote KIND_CPU instances for graphs no CPU instance runs: TensorRT plans (Triton's TensorRT backend
    refuses them: 'TensorRT backend supports only GPU device') and an ONNX Runtime engine optimised for CUDA (fp16
    graphs: tested with the export's above, whose video encoder crashes ONNX Runtime's CPU provider); exit 2 now."""
    from rap_deploy.engines.manifest import read_manifest, write_manifest

    cuda = tmp_path / "onnxruntime-cuda"
    shutil.copytree(micro_ort_engines["fp32"], cuda)
    write_manifest(cuda, {**read_manifest(cuda), "device": "cuda", "provider": "CUDAExecutionProvider"})
    for engine, why in ((_tensorrt_engine_folder(micro_ort_engines, tmp_path / "tensorrt-fp16"), "TensorRT plans"),
                        (cuda, "optimised for the CUDA provider")):
        res = runner.invoke(app, ["triton-repo", "--engine", str(engine), "--out", str(tmp_path / "repo"),
                                  "--kind", "cpu"])
        assert res.exit_code == 2 and why in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "repo").exists()
        res = runner.invoke(app, ["triton-repo", "--engine", str(engine), "--out", str(tmp_path / "repo"), "--json"])
        assert res.exit_code == 0 and json.loads(res.output)["kind"] == "gpu", res.output
        shutil.rmtree(tmp_path / "repo")
    from typer.main import get_command

    (kind,) = [p for p in get_command(app).commands["triton-repo"].params if p.name == "kind"]
    assert "fp16 graphs" in kind.help and "refused" in kind.help  # --help said auto gave fp16 graphs the CPU


def _tensorrt_engine_folder(micro_ort_engines, dest):
    """An engine folder as `build-engine --fp16` writes it on a TensorRT machine: the manifest comes from the real
    ``new_manifest``; the ``*.engine`` files are stand-in bytes (triton-repo copies them, it never runs them)."""
    from rap_deploy.atomic import sha256_file
    from rap_deploy.engines.manifest import graph_entry, new_manifest, write_manifest

    export = micro_ort_engines["export"]
    export_manifest = json.loads((export / "manifest.json").read_text())
    dest.mkdir()
    graphs = {}
    for g in GRAPHS:
        (dest / f"{g}.engine").write_bytes(b"stand-in serialized engine for " + g.encode())
        src = export / export_manifest["graphs"][g]["file"]
        graphs[g] = graph_entry(dest, f"{g}.engine", src, sha256_file(src))
    profiles = {"video_encoder": {"batch": {"min": 1, "opt": 4, "max": 8}},
                "text_encoder": {"batch": {"min": 1, "opt": 16, "max": 64}},
                "asa_head": {"queries": {"min": 1, "opt": 16, "max": 16}, "videos": {"min": 1, "opt": 32, "max": 32}}}
    manifest = new_manifest("tensorrt", "fp16", "cuda", "TensorRT", graphs, export_manifest, export,
                            profiles=profiles, gpu={"name": "NVIDIA H100", "compute_capability": "9.0"})
    manifest["versions"]["tensorrt"] = "10.9.0.34"
    write_manifest(dest, manifest)
    return dest


def test_tensorrt_engine_repository(micro_ort_engines, tmp_path):
    engine = _tensorrt_engine_folder(micro_ort_engines, tmp_path / "tensorrt-fp16")
    export = micro_ort_engines["export"]
    repo = tmp_path / "trt-repo"
    res = runner.invoke(app, ["triton-repo", "--engine", str(engine), "--out", str(repo)])
    assert res.exit_code == 0, res.output
    for graph, batch in zip(GRAPHS, (8, 64, 0), strict=True):
        cfg = _config(repo, graph)
        assert (cfg.platform, cfg.max_batch_size) == ("tensorrt_plan", batch)
        plan = repo / graph / "1" / "model.plan"
        assert plan.read_bytes() == (engine / f"{graph}.engine").read_bytes()
        _cross_check(cfg, export / f"{graph}.onnx")  # the graph the engine was built from
        assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        assert json.loads(cfg.parameters["rapdeploy.asa_blocks"].string_value) == {"queries": 16, "videos": 32}
        assert cfg.parameters["rapdeploy.precision"].string_value == "fp16"
    readme = (repo / "README.md").read_text()
    assert "TensorRT 10.9.0.34" in readme and "NVIDIA H100" in readme


def test_refusals(micro_ort_engines, micro_checkpoint, tmp_path):
    res = runner.invoke(app, ["triton-repo", "--engine", str(micro_checkpoint), "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "rapdeploy export" in res.output
    res = runner.invoke(app, ["triton-repo", "--engine", "http://127.0.0.1:8000", "--out", str(tmp_path / "b")])
    assert res.exit_code == 2
    res = runner.invoke(app, ["triton-repo", "--engine", str(micro_ort_engines["fp32"]), "--out", str(tmp_path / "c"),
                              "--fp16"])
    assert res.exit_code == 2 and "export folder" in res.output
    tampered = tmp_path / "tampered"
    shutil.copytree(micro_ort_engines["fp32"], tampered)
    with open(tampered / "text_encoder.onnx", "ab") as fh:
        fh.write(b"\0")
    res = runner.invoke(app, ["triton-repo", "--engine", str(tampered), "--out", str(tmp_path / "d")])
    assert res.exit_code == 1 and "text_encoder.onnx" in res.output
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("name", ["../secret.txt", "/etc/hostname", "beside.data"])
def test_an_engine_manifest_naming_external_data_copies_nothing_it_names(micro_ort_engines, tmp_path, name):
    """An engine manifest edited to give a graph an ``external_data`` entry (an export's key, which no engine check
    hashes) had triton-repo copy that file from wherever it pointed (``../secret.txt``, ``/etc/hostname``) into the
    repository, exit 0. An engine's files beside its graphs are its hashed ``extra_files`` only."""
    from rap_deploy.engines.manifest import read_manifest, write_manifest

    engine = tmp_path / "engine"
    shutil.copytree(micro_ort_engines["fp32"], engine)
    (tmp_path / "secret.txt").write_text("SECRET")
    (engine / "beside.data").write_text("not hashed")
    manifest = read_manifest(engine)
    manifest["graphs"]["text_encoder"]["external_data"] = {"file": name}
    write_manifest(engine, manifest)
    res = runner.invoke(app, ["triton-repo", "--engine", str(engine), "--out", str(tmp_path / "repo")])
    assert res.exit_code == 0, res.output
    copied = sorted(p.name for p in (tmp_path / "repo/text_encoder/1").iterdir())
    assert copied == ["model.onnx"], copied


@pytest.mark.parametrize("name", ["../outside.data", "sub/model.onnx"], ids=["outside", "onto the model"])
def test_extra_files_outside_the_engine_or_onto_the_model_are_refused(micro_ort_engines, tmp_path, name):
    """An engine's extra file named outside its folder, or so that its base name is the model file's (it was copied
    over model.onnx), is refused (exit 1) and nothing is written."""
    from rap_deploy.atomic import sha256_file
    from rap_deploy.engines.manifest import read_manifest, write_manifest

    engine = tmp_path / "engine"
    shutil.copytree(micro_ort_engines["fp32"], engine)
    target = (engine / name).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"weights")
    manifest = read_manifest(engine)
    manifest["graphs"]["text_encoder"]["extra_files"] = [
        {"file": name, "bytes": target.stat().st_size, "sha256": sha256_file(target)}]
    write_manifest(engine, manifest)
    res = runner.invoke(app, ["triton-repo", "--engine", str(engine), "--out", str(tmp_path / "repo")])
    assert res.exit_code == 1, res.output
    assert ("distinct names" if name.startswith("sub") else "outside") in " ".join(res.output.split()), res.output
    assert "Traceback" not in res.output and not (tmp_path / "repo").exists()


def test_a_repository_left_aside_by_a_killed_swap_is_back_before_it_is_judged(micro_ort_engines, tmp_path):
    """A repository a killed two-rename swap left aside (.<name>.old-<pid>) was judged absent, then put back by
    staged_folder and replaced without --force (as export and build-engine did). It is recovered first, then
    refused."""
    out = tmp_path / "repo"
    assert runner.invoke(app, ["triton-repo", "--engine", str(micro_ort_engines["fp32"]), "--out", str(out)]
                         ).exit_code == 0
    aside = tmp_path / ".repo.old-99999"
    out.rename(aside)
    (aside / "README.md").write_text("the earlier repository")  # why: tells it from a new one
    res = runner.invoke(app, ["triton-repo", "--engine", str(micro_ort_engines["fp32"]), "--out", str(out)])
    assert res.exit_code == 2 and "already exists" in res.output, res.output
    assert (out / "README.md").read_text() == "the earlier repository" and not aside.exists()


def test_force_replaces_only_a_model_repository(micro_ort_engines, tmp_path):
    """--force replaced whatever folder --out named: the engine folder itself (the engine was gone, a repository in
    its place) or a folder of the user's files. It replaces only a repository triton-repo wrote; a file is no
    folder for one, --force or not."""
    engine = tmp_path / "engine"
    shutil.copytree(micro_ort_engines["fp32"], engine)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me too")
    for out in (engine, mine, a_file):
        res = runner.invoke(app, ["triton-repo", "--engine", str(engine), "--out", str(out), "--force"])
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert (engine / "manifest.json").is_file() and not (engine / "README.md").exists()
    assert (mine / "notes.txt").read_text() == "keep me" and a_file.read_text() == "keep me too"
    assert "not a model repository" in runner.invoke(app, ["triton-repo", "--engine", str(engine), "--out", str(mine),
                                                           "--force"]).output


@pytest.mark.skipif(shutil.which("tritonserver") is None, reason="needs NVIDIA Triton Inference Server "
                    "(tritonserver on PATH), which cannot be installed on this machine")
def test_verify_against_triton(micro_ort_engines, micro_checkpoint, synth_root, tmp_path):
    """Triton serving the export folder's repository passes verify with zero rank changes."""
    import socket
    import subprocess
    import time
    import urllib.request

    repo = tmp_path / "repo"
    assert runner.invoke(app, ["triton-repo", "--engine", str(micro_ort_engines["export"]), "--out",
                               str(repo)]).exit_code == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["tritonserver", f"--model-repository={repo}", "--http-address=127.0.0.1",
                             f"--http-port={port}", "--allow-grpc=false", "--allow-metrics=false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if urllib.request.urlopen(url + "/v2/health/ready", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail(f"tritonserver did not become ready on {url} within a minute")
        res = runner.invoke(app, ["verify", "--dataset", "msrvtt", "--data-root", str(synth_root), "--engine", url,
                                  "--checkpoint", str(micro_checkpoint), "--out", str(tmp_path / "v"),
                                  "--rerank-top", "5", "--quiet"])
        assert res.exit_code == 0, res.output
        report = json.loads((tmp_path / "v" / "verify.json").read_text())
        assert report["passed"] and report["engine_info"]["backend"] == "remote"
        assert report["rank_changes"]["t2v"] == 0 and report["rank_changes"]["v2t"] == 0
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@pytest.mark.parametrize("option, value", [("--instances", str(1 << 31)), ("--max-queue-delay-us", str(1 << 64))])
def test_options_beyond_what_the_config_holds_are_usage_errors(micro_ort_engines, tmp_path, option, value):
    """config.pbtxt keeps instance_group.count as int32 and max_queue_delay_microseconds as uint64: a larger value
    is bad usage (exit 2, one line naming the option), not a protobuf traceback, and leaves no repository behind."""
    out = tmp_path / "repo"
    res = runner.invoke(app, ["triton-repo", "--engine", str(micro_ort_engines["fp32"]), "--out", str(out), option,
                              value])
    assert res.exit_code == 2 and option in res.output, (res.output, res.exception)
    assert not out.exists()


def test_a_tensorrt_engine_whose_profile_starts_above_one_is_refused(micro_ort_engines, tmp_path):
    """A TensorRT engine built with --min-batch 4 gave a repository with max_batch_size 8 and dynamic batching:
    Triton runs any batch from 1 up (a lone request, or what the batcher gathered by the queue delay) and the
    TensorRT backend refuses a shape below the profile's minimum ('model expected the shape of dimension 0 to be
    between 4 and 8 but received 1'), so every small request failed. It is refused (exit 2), nothing written."""
    from rap_deploy.engines.manifest import read_manifest, write_manifest

    engine = _tensorrt_engine_folder(micro_ort_engines, tmp_path / "tensorrt-min4")
    manifest = read_manifest(engine)
    manifest["profiles"]["video_encoder"]["batch"] = {"min": 4, "opt": 4, "max": 8}
    write_manifest(engine, manifest)
    res = runner.invoke(app, ["triton-repo", "--engine", str(engine), "--out", str(tmp_path / "repo")])
    assert res.exit_code == 2 and "video_encoder" in res.output and "--min-batch" in res.output, res.output
    assert "tensorrt-min4" in res.output  # the engine it refuses
    assert "Traceback" not in res.output and not (tmp_path / "repo").exists()


def test_the_tritonserver_command_is_quoted_for_the_shell(micro_ort_engines, tmp_path):
    """--out with a space (or another shell character) gave 'start Triton: tritonserver --model-repository=/a b/repo'
    and a README whose tritonserver and docker commands split the path in two when pasted into a shell."""
    import shlex

    repo = tmp_path / "my models $HOME" / "repo"
    res = runner.invoke(app, ["triton-repo", "--engine", str(micro_ort_engines["fp32"]), "--out", str(repo), "--json"])
    assert res.exit_code == 0, res.output
    command = json.loads(res.output)["command"]
    assert shlex.split(command) == ["tritonserver", f"--model-repository={repo.resolve()}"], command
    readme = (repo / "README.md").read_text()
    assert command in readme
    docker = readme.split("docker run", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    words = shlex.split(docker)
    assert words[words.index("-v") + 1] == f"{repo.resolve()}:/models", docker


def test_the_readme_regenerates_the_repository_from_the_recorded_export_folder(micro_ort_engines, tmp_path):
    """An ONNX Runtime engine's README said to generate the repository from the export folder with `rapdeploy
    triton-repo --engine EXPORT_DIR`, a placeholder (and no --out, which the command requires), though the engine's
    manifest records that folder; the command it names now carries the folder and this repository, and runs."""
    import shlex

    engine, repo = micro_ort_engines["fp32"], tmp_path / "my models" / "repo"
    res = runner.invoke(app, ["triton-repo", "--engine", str(engine), "--out", str(repo)])
    assert res.exit_code == 0, res.output
    readme = " ".join((repo / "README.md").read_text().split())
    assert "EXPORT_DIR" not in readme and "<export folder>" not in readme
    command = next(part for part in readme.split("`") if part.startswith("rapdeploy triton-repo --engine"))
    export = json.loads((engine / "manifest.json").read_text())["export_dir"]
    assert shlex.split(command) == ["rapdeploy", "triton-repo", "--engine", export, "--out", str(repo.resolve()),
                                    "--force", "--kind", "cpu"], command
    again = runner.invoke(app, shlex.split(command)[1:])
    assert again.exit_code == 0, again.output
    assert f"from `{Path(export).resolve()}` (export, fp32)" in (repo / "README.md").read_text()


def test_json_names_the_source_files_absolute_as_it_names_out(micro_ort_engines, tmp_path, monkeypatch):
    """``triton-repo --json`` gave ``out`` absolute but each model's ``source_file`` as the path was typed
    (``onnxruntime-fp32/video_encoder.onnx`` for a relative ``--engine``), which names nothing from another folder;
    both are absolute now, as every other command's JSON names its files."""
    engine = micro_ort_engines["fp32"]
    monkeypatch.chdir(engine.parent)
    res = runner.invoke(app, ["triton-repo", "--engine", engine.name, "--out", "repo", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["out"] == str((engine.parent / "repo").resolve())
    for name, model in doc["models"].items():
        assert Path(model["source_file"]).is_absolute(), (name, model["source_file"])
        assert Path(model["source_file"]).parent == engine.resolve(), (name, model["source_file"])


def test_the_readme_names_tritons_http_input_limit_for_a_full_batch(micro_ort_engines, tmp_path):
    """The repository advertises max_batch_size (32 videos: 220 MiB of ViT-B/32 frames), but tritonserver 2.59 and
    later take at most 64 MiB per HTTP request (--http-max-input-size's default), so a client that sent a full batch
    got 400. When the largest request passes 64 MiB the README now names the --http-max-input-size it needs; the
    command keeps to --model-repository, since older releases (which the engine's TensorRT may need) refuse the
    option."""
    import shlex

    from rap_deploy.engines.manifest import read_manifest, write_manifest

    engine = _tensorrt_engine_folder(micro_ort_engines, tmp_path / "tensorrt-big")
    manifest = read_manifest(engine)
    manifest["profiles"]["video_encoder"]["batch"] = {"min": 1, "opt": 4, "max": 2000}  # 2000 x 48 KiB: 94 MiB
    write_manifest(engine, manifest)
    res = runner.invoke(app, ["triton-repo", "--engine", str(engine), "--out", str(tmp_path / "repo"), "--json"])
    assert res.exit_code == 0, res.output
    assert len(shlex.split(json.loads(res.output)["command"])) == 2  # tritonserver --model-repository=…
    readme = (tmp_path / "repo" / "README.md").read_text()
    (size,) = [int(w.split("=")[1].rstrip("`")) for w in readme.split() if w.startswith("`--http-max-input-size=")]
    assert size % (1 << 20) == 0 and 2000 * (4 * 3 * 32 * 32 * 4 + 4 * 4) < size <= 100 << 20, readme
    assert "2.59" in readme
    runner.invoke(app, ["triton-repo", "--engine", str(micro_ort_engines["fp32"]), "--out", str(tmp_path / "small")])
    assert "--http-max-input-size" not in (tmp_path / "small" / "README.md").read_text()


def test_the_readmes_commands_take_the_repository_path_as_data():
    """export_repo_command got the repository back by parsing the tritonserver command it had built
    (``shlex.split(command)[1].split('=', 1)[1]``), and the README's docker line likewise: they now take the folder
    itself, so a path with '=', spaces or quotes is named as it is."""
    import shlex

    from rap_deploy.engines.serving.triton_repo import export_repo_command, tritonserver_command

    repo = Path("/srv/it's a=b") / "repo"
    command = export_repo_command({"export_dir": "/x/onnx"}, "fp16", "gpu", repo)
    assert shlex.split(command) == ["rapdeploy", "triton-repo", "--engine", "/x/onnx", "--out", str(repo),
                                    "--force", "--kind", "gpu", "--fp16"], command
    assert shlex.split(tritonserver_command(repo)) == ["tritonserver", f"--model-repository={repo}"]


def test_a_cpu_built_engine_gets_no_gpu_instances(micro_ort_engines, tmp_path):
    """--kind gpu wrote KIND_GPU instances for an ONNX Runtime engine optimised for the CPU provider (ORT_ENABLE_ALL,
    whose graphs hold CPU-only operators: NCHWc convolutions on x86), which a GPU instance does not run on the GPU.
    Refused now (exit 2), naming the engine folder, the reason and the fixes; its export folder and an engine
    optimised at the basic level (standard operators only) still get GPU instances."""
    from rap_deploy.engines.manifest import read_manifest, write_manifest
    from rap_deploy.engines.rebuild_commands import export_word

    engine = micro_ort_engines["fp32"]
    manifest = json.loads((engine / "manifest.json").read_text())
    assert (manifest["provider"], manifest["session"]["graph_optimization_level"]) == ("CPUExecutionProvider",
                                                                                       "ORT_ENABLE_ALL")
    repo = tmp_path / "repo"
    res = runner.invoke(app, ["triton-repo", "--engine", str(engine), "--out", str(repo), "--kind", "gpu"])
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and f"engine {engine}:" in said and "ORT_ENABLE_ALL" in said, res.output
    assert "CPU-only operators" in said and "use --kind cpu (or auto)" in said, said
    assert f"rapdeploy triton-repo --engine {export_word(manifest)} --kind gpu" in said, said
    assert "--backend onnxruntime --device cuda" in said and not repo.exists(), said
    res = runner.invoke(app, ["triton-repo", "--engine", str(micro_ort_engines["export"]), "--out", str(repo),
                              "--kind", "gpu"])
    assert res.exit_code == 0, res.output
    basic = tmp_path / "onnxruntime-basic"
    shutil.copytree(engine, basic)
    write_manifest(basic, {**read_manifest(basic), "session": {**manifest["session"],
                                                               "graph_optimization_level": "ORT_ENABLE_BASIC"}})
    res = runner.invoke(app, ["triton-repo", "--engine", str(basic), "--out", str(tmp_path / "basic"), "--kind",
                              "gpu"])
    assert res.exit_code == 0, res.output


def test_an_out_typed_as_a_url_is_refused_and_nothing_written(tmp_path, monkeypatch):
    """``triton-repo --out http://triton:8000`` (as if it uploaded to a running Triton) wrote the repository into
    ./http:/triton:8000, a Path's reading of the URL, and printed `tritonserver --model-repository=.../http:/...`.
    It is refused now (exit 2) before any engine is read, saying the repository is a folder tritonserver serves."""
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["triton-repo", "--out", "http://triton:8000", "--engine", str(tmp_path / "none")])
    assert res.exit_code == 2, res.output
    line = res.stderr.strip()
    assert line.startswith("error: --out http://triton:8000 is a URL, not a folder") and "--model-repository" in line
    assert "\n" not in line and not (tmp_path / "http:").exists()
