"""``rapdeploy export`` on the tiny rap-micro model: graphs, checks, parity, metadata, fp16 and the CLI contract."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from rap_deploy.cli.app import app
from rap_deploy.export.parity import asa_tokens_given
from rap_deploy.graphs import ASA_INPUTS

# Fractional and negative ASA offsets (γ per head (y, x) in patches, δ per head in frames): every sampling branch.
PATCH_OFFSET = [[0.3, -1.6], [-0.7, 2.25]]
TIME_OFFSET = [-1.3, 0.6]


def _cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _build(ckpt_path: Path):
    from rap_deploy.checkpoint import load_checkpoint

    return load_checkpoint(ckpt_path).build_model()


@pytest.fixture(scope="module")
def offset_checkpoint(micro_checkpoint, tmp_path_factory) -> Path:
    """The randomised micro checkpoint with explicit fractional and negative ASA offsets."""
    from rap_deploy.checkpoint import checkpoint_from_model, load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(micro_checkpoint)
    model = ckpt.build_model()
    with torch.no_grad():
        model.asa.patch_offset.copy_(torch.tensor(PATCH_OFFSET))
        model.asa.time_offset.copy_(torch.tensor(TIME_OFFSET))
    path = tmp_path_factory.mktemp("offsets") / "micro_offsets.pt"
    save_checkpoint(checkpoint_from_model(model, ckpt), path)
    return path


@pytest.fixture(scope="module")
def exported(offset_checkpoint, tmp_path_factory) -> tuple[Path, dict]:
    """Export through the real CLI (fp32 + fp16); returns (folder, manifest printed by --json)."""
    out = tmp_path_factory.mktemp("export") / "onnx"
    result = _cli("export", offset_checkpoint, "--out", out, "--fp16", "--json")
    assert result.exit_code == 0, result.output
    return out, json.loads(result.output)


@pytest.fixture(scope="module")
def light_checkpoint(tmp_path_factory) -> Path:
    from conftest import micro_config, randomize_adapters

    from rap_deploy.checkpoint import checkpoint_from_model, new_checkpoint, save_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec

    ckpt, model = new_checkpoint(micro_config(variant="rap_light"), BackboneSpec.parse("rap-micro", "none"), seed=0)
    randomize_adapters(model, seed=2)
    path = tmp_path_factory.mktemp("light") / "light.pt"
    save_checkpoint(checkpoint_from_model(model, ckpt), path)
    return path


# ---------------------------------------------------------------------------------------------------- full export
def test_export_writes_checked_graphs_and_parity(exported, offset_checkpoint):
    out, manifest = exported
    names = ("video_encoder", "text_encoder", "asa_head")
    for name in names:
        assert (out / f"{name}.onnx").is_file() and (out / f"{name}.fp16.onnx").is_file()
    assert manifest["format"] == "rapdeploy.export" and manifest["format_version"] == 1
    assert set(manifest["graphs"]) == set(names) == set(manifest["fp16_graphs"])
    assert manifest["exporter"]["name"] == "torchscript" and manifest["exporter"]["dynamo"] is False
    assert manifest["opset"] == 17
    assert manifest["graphs"]["asa_head"]["block_memory"]["bytes_per_query_video_pair"] > 0

    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] is True
    for name in names:
        g = parity["graphs"][name]
        assert g["max_abs"] <= 1e-4 and g["min_cosine"] >= 0.99999 and g["topk_match"] is True, (name, g)
        assert g["passed"] is True
    assert parity["graphs"]["video_encoder"]["batch_sizes"] == [1, 2, 3]
    # the tokens axis is dynamic: the caption pool is run again cut to its longest caption, within tolerance
    trimmed = [r for r in parity["graphs"]["text_encoder"]["runs"] if "tokens" in str(r["batch"])]
    assert len(trimmed) == 1 and trimmed[0]["max_abs"] <= 1e-4, parity["graphs"]["text_encoder"]["runs"]
    assert parity["graphs"]["video_encoder"]["patch_topk_match"] is True
    # asa_head: Q and V both vary (and differ), plus the whole pool.
    assert [[1, 1], [2, 3], [3, 2]] == parity["graphs"]["asa_head"]["batch_sizes"][:3]
    assert parity["pipeline"]["passed"] is True and parity["pipeline"]["topk_match"] is True
    # Real inputs: decoded synthetic videos, some of them padded (short videos), and their captions.
    assert parity["inputs"]["source"].startswith("synthetic")
    assert min(parity["inputs"]["valid_frames"]) < 4 == max(parity["inputs"]["valid_frames"])
    assert all(isinstance(c, str) and c for c in parity["inputs"]["captions"])


def test_adapters_are_not_identity_and_offsets_fractional_negative(offset_checkpoint, exported):
    from rap_deploy.checkpoint import load_checkpoint

    state = load_checkpoint(offset_checkpoint).adapter_state
    assert torch.count_nonzero(state["lorm_attn.0.v_scale"]) > 0 and torch.count_nonzero(state["asa.out_proj.weight"])
    offsets = torch.cat([state["asa.patch_offset"].flatten(), state["asa.time_offset"]])
    assert (offsets < 0).any() and (offsets != offsets.round()).all()
    assert json.loads((exported[0] / "parity.json").read_text())["graphs"]["asa_head"]["passed"] is True


def test_graph_structure(exported):
    out, manifest = exported
    for name in ("video_encoder", "text_encoder", "asa_head"):
        model = onnx.load(str(out / f"{name}.onnx"))
        assert {o.domain: o.version for o in model.opset_import}[""] == 17
        ops = {n.op_type for n in model.graph.node}
        assert not ops & {"GridSample", "NonZero", "If", "Loop", "ArgMax"}, (name, ops)
        if name == "asa_head":
            assert "TopK" in ops
    text = {i.name: i for i in onnx.load(str(out / "text_encoder.onnx")).graph.input}
    assert text["eot"].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert text["input_ids"].type.tensor_type.elem_type == onnx.TensorProto.INT32
    video = manifest["graphs"]["video_encoder"]
    assert video["inputs"][0] == {"name": "frames", "shape": ["batch", 4, 3, 32, 32], "dtype": "float32"}
    assert video["inputs"][1] == {"name": "frame_mask", "shape": ["batch", 4], "dtype": "float32"}
    assert [o["shape"] for o in video["outputs"]] == [["batch", 32], ["batch", 4, 32], ["batch", 4, 16, 32],
                                                      ["batch", 4, 16, 48]]  # asa_tokens: 3·d_a = 48
    assert [o["name"] for o in video["outputs"]] == ["video_emb", "frame_emb", "patch_tokens", "asa_tokens"]
    assert {o["dtype"] for o in video["outputs"]} == {"float32"}
    asa = manifest["graphs"]["asa_head"]
    assert asa["inputs"] == [{"name": "text_emb", "shape": ["queries", 32], "dtype": "float32"},
                             {"name": "frame_emb", "shape": ["videos", 4, 32], "dtype": "float32"},
                             {"name": "patch_tokens", "shape": ["videos", 4, 16, 32], "dtype": "float16"},
                             {"name": "asa_tokens", "shape": ["videos", 4, 16, 48], "dtype": "float32"}]
    assert asa["outputs"] == [{"name": "similarity", "shape": ["queries", "videos"], "dtype": "float32"}]
    # The q/k/v projections (and the warp) run once per video in the video encoder; per query only the selection,
    # a gather of the selected rows, attention and the output projection are left.
    assert _weight_shapes(out / "asa_head.onnx") == [[16, 32]]  # out_proj only
    assert [48, 32] in _weight_shapes(out / "video_encoder.onnx") or [32, 48] in _weight_shapes(
        out / "video_encoder.onnx")  # q|k|v in one projection


def _weight_shapes(path: Path) -> list[list[int]]:
    """Shapes of the constant weights of a graph's MatMul/Gemm nodes."""
    model = onnx.load(str(path))
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    return [inits[n.input[1]] for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits]


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_runs_each_graph(exported, offset_checkpoint, batch):
    """ONNX Runtime runs every graph at batch 1 and 3 (ASA: Q = batch, V = 4 - batch) and matches PyTorch."""
    import onnxruntime as ort

    out, _ = exported
    model = _build(offset_checkpoint)
    gen = torch.Generator().manual_seed(batch)
    frames = torch.randn(batch, 4, 3, 32, 32, generator=gen)
    mask = torch.ones(batch, 4)
    mask[0, -1] = 0
    ids = torch.randint(1, 40000, (batch, 32), generator=gen, dtype=torch.int32)
    eot = torch.full((batch,), 7, dtype=torch.int32)

    def run(name, feeds):
        sess = ort.InferenceSession(str(out / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        return sess.run(None, {k: v.numpy() for k, v in feeds.items()})

    with torch.no_grad():
        ref_v = model.encode_video(frames, mask)
        ref_t = model.encode_text(ids, eot)
        v = 4 - batch
        frames_v = torch.randn(v, 4, 3, 32, 32, generator=gen)
        _, fe, pt, at = model.encode_video(frames_v)
        pt = pt.half()  # the asa_head graph takes patch tokens as the index stores them
        ref_s = model.asa(ref_t, fe, pt, at)
    outs = run("video_encoder", {"frames": frames, "frame_mask": mask})
    assert len(outs) == 4
    ref_v = (*ref_v[:3], torch.from_numpy(asa_tokens_given(model, outs[2], mask.numpy())))  # on its own tokens
    for r, o in zip(ref_v, outs, strict=True):
        np.testing.assert_allclose(o, r.numpy(), atol=1e-5)
    np.testing.assert_allclose(run("text_encoder", {"input_ids": ids, "eot": eot})[0], ref_t.numpy(), atol=1e-5)
    # only the tokens up to the EOT (position 7) matter: the graph takes [B, 8] and gives the same embeddings
    np.testing.assert_allclose(run("text_encoder", {"input_ids": ids[:, :8], "eot": eot})[0], ref_t.numpy(),
                               atol=1e-5)
    sim = run("asa_head", {"text_emb": ref_t, "frame_emb": fe, "patch_tokens": pt, "asa_tokens": at})[0]
    assert sim.shape == (batch, v)
    np.testing.assert_allclose(sim, ref_s.numpy(), atol=1e-5)


@pytest.mark.parametrize("graph", ["asa_head.onnx", "asa_head.fp16.onnx"])
def test_an_all_padded_video_scores_zero_in_the_asa_head_graph(exported, offset_checkpoint, graph):
    """A video without a real frame scores 0 in the exported asa_head, as in PyTorch, stage 1 and meanP: the ASA
    output projection's bias (non-zero once trained) gave it the score text · bias/|bias|."""
    import onnxruntime as ort

    out, _ = exported
    model = _build(offset_checkpoint)
    assert model.asa.out_proj.bias.abs().max() > 0
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    with torch.no_grad():
        _, fe, pt, at = model.encode_video(torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
                                           mask)
        text = model.encode_text(torch.randint(1, 40000, (3, 8), dtype=torch.int32), torch.full((3,), 7))
        ref = model.asa(text, fe, pt.half(), at)
    sess = ort.InferenceSession(str(out / graph), providers=["CPUExecutionProvider"])
    sim = sess.run(None, {"text_emb": text.numpy(), "frame_emb": fe.numpy(), "patch_tokens": pt.half().numpy(),
                          "asa_tokens": at.numpy()})[0]
    assert ref[:, 1].abs().max() == 0 and np.abs(sim[:, 1]).max() == 0
    np.testing.assert_allclose(sim[:, 0], ref[:, 0].numpy(), atol=1e-5 if "fp16" not in graph else 5e-3)


def test_metadata_round_trip(exported, offset_checkpoint):
    from rap_deploy.atomic import sha256_file
    from rap_deploy.checkpoint import load_checkpoint
    from rap_deploy.export import read_metadata

    out, _ = exported
    config = load_checkpoint(offset_checkpoint).config
    for path in sorted(out.glob("*.onnx")):
        meta = read_metadata(path)
        assert meta["config"] == config.to_dict()
        assert meta["preprocess"] == config.preprocess.to_dict()
        assert meta["tokenizer"] == config.tokenizer.to_dict()
        assert meta["sampling"] == config.sampling.to_dict()
        assert meta["checkpoint_sha256"] == sha256_file(offset_checkpoint)
        assert meta["opset"] == 17 and meta["exporter"]["name"] == "torchscript"
        assert meta["graph"] == path.name.split(".")[0]
        assert meta["precision"] == ("fp16" if ".fp16." in path.name else "fp32")
        assert meta["torch_version"] == torch.__version__ and meta["rapdeploy_version"]


def test_read_metadata_of_a_damaged_file_is_a_check_failure(exported, tmp_path):
    """read_metadata (public API: 'UsageError when the file does not exist or carries no rapdeploy metadata') let
    protobuf's DecodeError through for a file that is not ONNX, and json's JSONDecodeError for damaged metadata; both
    are a CheckFailedError naming the file now."""
    from rap_deploy.errors import CheckFailedError
    from rap_deploy.export import read_metadata

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx graph at all")
    with pytest.raises(CheckFailedError, match="junk.onnx"):
        read_metadata(junk)
    model = onnx.load(str(exported[0] / "text_encoder.onnx"))
    next(p for p in model.metadata_props if p.key == "rapdeploy.config").value = "{"
    onnx.save(model, str(tmp_path / "damaged.onnx"))
    with pytest.raises(CheckFailedError, match="metadata is damaged"):
        read_metadata(tmp_path / "damaged.onnx")


def test_fp16_graphs_keep_sensitive_ops_fp32(exported):
    out, manifest = exported
    fp32_ops = {"LayerNormalization", "Softmax", "ReduceSum", "ReduceL2", "ReduceMean", "TopK"}
    for name in ("video_encoder", "text_encoder", "asa_head"):
        model = onnx.shape_inference.infer_shapes(onnx.load(str(out / f"{name}.fp16.onnx")))
        g = model.graph
        types = {i.name: i.data_type for i in g.initializer}
        types.update({v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.value_info, *g.output)})
        io = [*manifest["graphs"][name]["inputs"], *manifest["graphs"][name]["outputs"]]
        assert [onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
                for v in (*g.input, *g.output)] == [t["dtype"] for t in io]  # keep_io_types: the contract's dtypes
        half = [n for n in g.node if n.op_type in ("MatMul", "Gemm", "Conv")
                and types.get(n.output[0]) == onnx.TensorProto.FLOAT16]
        assert half, f"{name}: no fp16 matmul"
        for n in g.node:
            if n.op_type in fp32_ops:
                assert types[n.input[0]] == onnx.TensorProto.FLOAT, (name, n.op_type, n.name)
    parity = json.loads((out / "parity.json").read_text())
    for name, fig in parity["fp16"]["graphs"].items():
        assert "error" not in fig and 0 < fig["max_abs"] < 0.05, (name, fig)
    assert manifest["fp16_graphs"]["asa_head"]["file"] == "asa_head.fp16.onnx"


def test_fp16_asa_head_scores_are_not_rounded_to_fp16(exported, offset_checkpoint):
    """What TensorRT 11 and ONNX Runtime CUDA run keeps each score's last reduction in fp32 (the precision plan), so
    scores do not tie the ground truth the way fp16-rounded ones do (the H200 check's PyTorch fp16 finding)."""
    import onnxruntime as ort

    out, _ = exported
    model = _build(offset_checkpoint)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        _, fe, pt, at = model.encode_video(torch.randn(24, 4, 3, 32, 32, generator=gen))
        text = model.encode_text(torch.randint(1, 40000, (6, 32), generator=gen, dtype=torch.int32),
                                 torch.full((6,), 9, dtype=torch.int32))
    sess = ort.InferenceSession(str(out / "asa_head.fp16.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"text_emb": text, "frame_emb": fe, "patch_tokens": pt.half(), "asa_tokens": at}
    dtypes = {i.name: np.float16 if i.type == "tensor(float16)" else np.float32 for i in sess.get_inputs()}
    sim = sess.run(None, {k: v.numpy().astype(dtypes[k]) for k, v in feeds.items()})[0]
    assert sim.dtype == np.float32 and sim.shape == (6, 24)
    assert not np.array_equal(sim, sim.astype(np.float16).astype(np.float32))
    assert all(len(np.unique(row)) == len(row) for row in sim)


def test_read_export_manifest_validates_hashes(exported, tmp_path):
    from rap_deploy.errors import CheckFailedError, UsageError
    from rap_deploy.export import read_export_manifest

    out, manifest = exported
    assert read_export_manifest(out)["graphs"]["text_encoder"]["sha256"] == manifest["graphs"]["text_encoder"]["sha256"]
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / "text_encoder.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(CheckFailedError, match="text_encoder.onnx"):  # a tampered graph: exit 1
        read_export_manifest(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(UsageError, match="no manifest.json"):
        read_export_manifest(copy)


def test_existing_folder_refused_without_force(exported, offset_checkpoint):
    out, _ = exported
    result = _cli("export", offset_checkpoint, "--out", out)
    assert result.exit_code == 2 and "--force" in result.output


def test_force_records_the_graphs_the_replaced_export_loses(exported, offset_checkpoint, tmp_path):
    """--force swaps the whole folder, so an fp16 export replaced by an fp32-only one loses its fp16 graphs; the
    manifest's removed_stale (files of the old export not rewritten) was always empty: it was computed in the fresh
    staging folder, where nothing old ever is."""
    out = tmp_path / "onnx"
    shutil.copytree(exported[0], out)
    result = _cli("export", offset_checkpoint, "--out", out, "--force", "--json")
    assert result.exit_code == 0, result.output
    lost = [f"{g}.fp16.onnx" for g in ("asa_head", "text_encoder", "video_encoder")]
    assert json.loads(result.output)["removed_stale"] == lost
    assert not any((out / name).exists() for name in lost)


def test_the_export_table_shows_folders_with_brackets_as_they_are(exported, tmp_path, capsys, monkeypatch):
    """export printed its folder and its parity inputs' source through rich markup: --out 'xo[/b]' ended a finished
    export with rich's MarkupError traceback (reproduced with the CLI), 'runs [old]' printed as 'runs '."""
    from rap_deploy.cli.export_cmds import _print_table

    monkeypatch.setenv("COLUMNS", "400")  # no wrapping inside the long folder names
    out, manifest = exported
    for name in ("xo[/b]", "runs [old]"):
        copy = shutil.copytree(out, tmp_path / name)
        parity = json.loads((copy / "parity.json").read_text())
        parity["inputs"]["source"] = f"msrvtt test split at /data/{name}"
        (copy / "parity.json").write_text(json.dumps(parity))
        _print_table(copy, manifest)
        text = " ".join(capsys.readouterr().out.split())
        assert f"exported to {copy}" in text and f"at /data/{name}" in text, text


# ---------------------------------------------------------------------------------------------------- variants
def test_rap_light_exports_two_graphs(light_checkpoint, tmp_path):
    from rap_deploy.export import export_checkpoint

    out = tmp_path / "light"
    manifest = export_checkpoint(light_checkpoint, out, progress=False)
    assert set(manifest["graphs"]) == {"video_encoder", "text_encoder"} and not manifest["has_asa"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "parity.json", "text_encoder.onnx",
                                                      "video_encoder.onnx"]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and set(parity["graphs"]) == {"video_encoder", "text_encoder"}
    assert "meanP" in parity["pipeline"]["what"]
    # Its manifest records asa_token_width 0 (no ASA head); every later stage refused it as "edited" (exit 1).
    assert manifest["dims"]["asa_token_width"] == 0
    result = _cli("build-engine", out, "--out", tmp_path / "engine", "--no-validate", "--quiet")
    assert result.exit_code == 0, result.output


def test_forced_parity_failure_exits_1(light_checkpoint, tmp_path, monkeypatch):
    """A weight of the text graph is tampered with after export: parity fails, exit 1, parity.json says so."""
    from onnx import numpy_helper

    from rap_deploy.export import onnx_export

    real_save = onnx_export.save_onnx

    def tampering_save(model, path, threshold):
        if path.name == "text_encoder.onnx":
            init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
            noise = np.random.default_rng(0).normal(0.0, 0.05, size=tuple(init.dims)).astype(np.float32)
            arr = numpy_helper.to_array(init) + noise
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
        return real_save(model, path, threshold)

    monkeypatch.setattr(onnx_export, "save_onnx", tampering_save)
    result = _cli("export", light_checkpoint, "--workspace", tmp_path / "ws", "--quiet")  # default --out
    out = tmp_path / "ws" / "onnx"
    assert result.exit_code == 1, result.output
    assert "parity" in result.output
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] is False
    assert parity["graphs"]["text_encoder"]["passed"] is False
    assert parity["graphs"]["video_encoder"]["passed"] is True
    assert not (out / "manifest.json").exists()


# ---------------------------------------------------------------------------------------------------- refusals
class _Payload:
    """Any non-allowlisted class makes torch.load(weights_only=True) refuse the file."""


def test_pickled_checkpoint_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"format": "rapdeploy.checkpoint", "obj": _Payload()}, path)
    result = _cli("export", path, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "refusing" in result.output
    assert not (tmp_path / "o").exists()


def test_missing_checkpoint_and_bad_opset(tmp_path, micro_checkpoint):
    result = _cli("export", tmp_path / "nope.pt", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "does not exist" in result.output
    result = _cli("export", micro_checkpoint, "--out", tmp_path / "o", "--opset", "16")
    assert result.exit_code == 2 and "opset 16" in result.output


def test_the_newest_opset_exports_and_builds(micro_checkpoint, tmp_path):
    """--opset 19 (the newest the help offers; only 17, the default, and a refused 16 were ever tested): its fp32 and
    fp16 graphs are that opset and pass parity, and an fp16 TensorRT build (API-surface fake of TensorRT 11, which
    builds from the fp16 graphs) passes its validation against PyTorch."""
    from conftest import fake_tensorrt_env

    from rap_deploy.engines.build import build_engine

    out = tmp_path / "onnx19"
    result = _cli("export", micro_checkpoint, "--out", out, "--opset", "19", "--fp16", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["opset"] == 19
    for name in ("video_encoder", "text_encoder", "asa_head"):
        for file in (f"{name}.onnx", f"{name}.fp16.onnx"):
            model = onnx.load(str(out / file), load_external_data=False)
            assert {o.domain: o.version for o in model.opset_import}[""] == 19, file
    assert json.loads((out / "parity.json").read_text())["passed"] is True
    with fake_tensorrt_env(11):
        manifest = build_engine(out, backend="tensorrt", fp16=True, out=tmp_path / "trt", workspace=tmp_path / "ws",
                                progress=False)
    assert manifest["validation"]["passed"], manifest["validation"]


def test_a_checkpoint_replaced_while_export_reads_it_is_refused(micro_checkpoint, light_checkpoint, tmp_path,
                                                                 monkeypatch):
    """export loaded the checkpoint, then hashed the file at its path again: a best.pt that training replaced in
    between got the new file's sha256 in the manifest beside graphs of the old weights (reproduced: manifest sha256 =
    the replacement's), so verify held them to another model. A file replaced or rewritten meanwhile is refused."""
    import rap_deploy.checkpoint as checkpoint_module
    from rap_deploy.errors import UsageError
    from rap_deploy.export import export_checkpoint

    path = shutil.copy(micro_checkpoint, tmp_path / "best.pt")
    real_load = checkpoint_module.load_checkpoint

    def load_then_training_writes(p):
        ckpt = real_load(p)
        os.replace(shutil.copy(light_checkpoint, tmp_path / "next.pt"), path)  # training's atomic save
        return ckpt

    monkeypatch.setattr(checkpoint_module, "load_checkpoint", load_then_training_writes)
    with pytest.raises(UsageError, match="replaced or rewritten while export read it"):
        export_checkpoint(path, tmp_path / "onnx", progress=False)
    assert not (tmp_path / "onnx").exists()


@pytest.mark.parametrize("in_place", [True, False])
def test_a_checkpoint_rewritten_with_its_size_and_mtime_kept_is_refused(micro_checkpoint, tmp_path, monkeypatch,
                                                                        in_place):
    """export compared the checkpoint's device, inode, size and mtime before and after reading it: a file rewritten
    in place with another byte, its size kept and its mtime set back (os.utime), read as unchanged, and the manifest
    held the sha256 of content the graphs were not made from. The change time (atomic.file_identity), which no process
    can set back, is compared too; a replacement of that size and mtime (another inode) is refused as before."""
    import rap_deploy.checkpoint as checkpoint_module
    from rap_deploy.errors import UsageError
    from rap_deploy.export import export_checkpoint

    path = shutil.copy(micro_checkpoint, tmp_path / "best.pt")
    real_load = checkpoint_module.load_checkpoint

    def load_then_rewrite_keeping_size_and_mtime(p):
        ckpt = real_load(p)
        st = os.stat(path)
        target = path if in_place else shutil.copy(path, tmp_path / "next.pt")
        with open(target, "r+b") as fh:  # another byte in the middle: same size
            fh.seek(st.st_size // 2)
            byte = fh.read(1)
            fh.seek(st.st_size // 2)
            fh.write(bytes([byte[0] ^ 0xFF]))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        if not in_place:
            os.replace(target, path)
        after = os.stat(path)
        assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
        assert (after.st_ino == st.st_ino) is in_place
        return ckpt

    monkeypatch.setattr(checkpoint_module, "load_checkpoint", load_then_rewrite_keeping_size_and_mtime)
    with pytest.raises(UsageError, match="replaced or rewritten while export read it"):
        export_checkpoint(path, tmp_path / "onnx", progress=False)
    assert not (tmp_path / "onnx").exists()


# ---------------------------------------------------------------------------------------------------- units
def test_topk_agreement_allows_only_ties():
    from rap_deploy.export.parity import min_cosine, topk_agreement

    ref = np.array([[0.9, 0.5, 0.5, 0.1]])
    swapped_tie = np.array([[0.9, 0.49, 0.51, 0.1]])
    r = topk_agreement(ref, np.array([[0.9, 0.5, 0.5 + 1e-9, 0.1]]), 3, 1e-6)
    assert r["match"] and not r["exact"] and r["ties"] == 2
    assert not topk_agreement(ref, swapped_tie[:, ::-1].copy(), 2, 1e-6)["match"]
    assert topk_agreement(ref, ref, 4, 0.0) == {"match": True, "exact": True, "ties": 0, "rows": 1, "k": 4}
    zero_rows = np.zeros((2, 3))
    assert min_cosine(zero_rows, zero_rows) == 1.0
    assert min_cosine(np.array([[1.0, 0.0]]), np.array([[0.0, 0.0]])) == 0.0


def _tiny_model(nodes, inputs, outputs, inits=()):
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_checks_flag_forbidden_ops_and_missing_topk(tmp_path):
    from onnx import TensorProto, helper

    from rap_deploy.export.checks import check_graph
    from rap_deploy.export.export_config import GraphSpec, TensorSpec

    f = helper.make_tensor_value_info
    model = _tiny_model(
        [helper.make_node("GridSample", ["x", "grid"], ["y"]),
         helper.make_node("ArgMax", ["ids"], ["pos"], axis=1, keepdims=0)],
        [f("x", TensorProto.FLOAT, [1, 1, 4, 4]), f("grid", TensorProto.FLOAT, [1, 2, 2, 2]),
         f("ids", TensorProto.INT64, [1, 8])],
        [f("y", TensorProto.FLOAT, [1, 1, 2, 2]), f("pos", TensorProto.INT64, [1])])
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    spec = GraphSpec("asa_head", (TensorSpec("x", (1, 1, 4, 4), "float32"),), (TensorSpec("y", (1, 1, 2, 2),
                                                                                         "float32"),))
    report = check_graph(path, spec, 17)
    text = " ".join(report["problems"])
    assert not report["passed"]
    assert "GridSample" in text and "ArgMax over int64" in text and "TopK" in text and "input names" in text


def test_checks_state_the_ir_version_and_refuse_one_older_than_the_opset(tmp_path):
    """The IR version was neither recorded nor checked, and onnx's checker accepts an IR version older than the opset
    needs (IR 8 with opset 19, which needs 9): the export's checks now record it and flag that."""
    from onnx import TensorProto, helper

    from rap_deploy.export.checks import check_graph
    from rap_deploy.export.export_config import GraphSpec, TensorSpec

    f = helper.make_tensor_value_info
    spec = GraphSpec("text_encoder", (TensorSpec("x", (1, 4), "float32"),), (TensorSpec("y", (1, 4), "float32"),))
    for ir, opset, problem in ((8, 17, False), (9, 19, False), (8, 19, True)):
        model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                    [f("x", TensorProto.FLOAT, [1, 4])],
                                                    [f("y", TensorProto.FLOAT, [1, 4])]),
                                  opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = ir
        onnx.save(model, str(tmp_path / "g.onnx"))
        report = check_graph(tmp_path / "g.onnx", spec, opset)
        assert report["ir_version"] == ir
        assert report["passed"] is not problem, report["problems"]
        assert problem == any("IR version 8 is older than its opsets need (9)" in p for p in report["problems"])


def test_save_onnx_external_data_is_atomic_and_loadable(tmp_path):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from rap_deploy.export.onnx_export import save_onnx

    w = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096
    model = _tiny_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
                        [numpy_helper.from_array(w, "w")])
    path = save_onnx(model, tmp_path / "g.onnx", external_data_threshold=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx", "g.onnx.data"]
    x = np.ones((1, 64), np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ w, rtol=1e-6)


def test_save_onnx_external_data_leaves_the_model_whole(tmp_path):
    """onnx.save with external data empties the proto's weights (raw_data cleared, locations pointing at the .data
    file); the fp16 conversion then read the fp32 graph's weights from a file that is not there (a traceback)."""
    from onnx import TensorProto, helper, numpy_helper

    from rap_deploy.export.onnx_export import save_onnx

    w = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096
    model = _tiny_model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
                        [numpy_helper.from_array(w, "w")])
    save_onnx(model, tmp_path / "g.onnx", external_data_threshold=1000)
    (init,) = model.graph.initializer
    assert init.data_location == TensorProto.DEFAULT and not init.external_data
    np.testing.assert_array_equal(numpy_helper.to_array(init), w)


def test_fp16_export_of_graphs_with_external_data(light_checkpoint, tmp_path):
    """A model over the external-data threshold (ViT-H and larger) exports with --fp16: fp32 graphs with their
    .data files, fp16 graphs converted from the whole weights."""
    from rap_deploy.export.export_config import ExportConfig
    from rap_deploy.export.onnx_export import export_checkpoint

    out = tmp_path / "onnx"
    manifest = export_checkpoint(light_checkpoint, out, config=ExportConfig(fp16=True, external_data_threshold=10_000),
                                 progress=False)
    assert (out / "video_encoder.onnx.data").is_file() and manifest["fp16_graphs"]
    assert "external_data" in manifest["graphs"]["video_encoder"]


def test_saliency_selection_asa_head_matches(tmp_path):
    """The frame-saliency ASA variant (one conditioned embedding per video) traces and matches too."""
    import onnxruntime as ort
    from conftest import micro_config, randomize_adapters

    from rap_deploy.checkpoint import new_checkpoint
    from rap_deploy.export.export_config import ExportConfig, ModelDims, graph_specs
    from rap_deploy.export.onnx_export import example_inputs, trace_graph
    from rap_deploy.export.wrappers import AsaHeadGraph
    from rap_deploy.model.clip_loader import BackboneSpec

    _, model = new_checkpoint(micro_config(asa_selection="saliency"), BackboneSpec.parse("rap-micro", "none"))
    randomize_adapters(model, seed=3)
    dims = ModelDims.of(model)
    spec = graph_specs(dims, True)["asa_head"]
    head = AsaHeadGraph(model).eval()
    proto = trace_graph(head, spec, example_inputs(model, dims, 2)["asa_head"], ExportConfig(optimize=False))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    args = example_inputs(model, dims, 3)["asa_head"]  # 3 queries, 4 videos
    with torch.no_grad():
        ref = model.asa_similarity(*args).numpy()
    feeds = dict(zip(ASA_INPUTS, (a.numpy() for a in args), strict=True))
    out = sess.run(None, feeds)[0]
    assert out.shape == (3, 4)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_parity_inputs_from_a_dataset_folder(tmp_path):
    """--data-root: the first test videos are decoded with the model's sampling/preprocessing, captions tokenized."""
    from conftest import micro_config

    from rap_deploy.data.datasets import load_split
    from rap_deploy.data.synth_dataset import generate_synthetic_dataset
    from rap_deploy.export.inputs import parity_inputs

    generate_synthetic_dataset(tmp_path, videos=6, test_videos=4, seed=5, size=64, seconds=3, progress=False)
    config = micro_config()
    inputs = parity_inputs(config, data_root=tmp_path, count=6)
    split = load_split("msrvtt", tmp_path, "test")
    assert inputs.video_ids == [v.video_id for v in split.videos]  # only 4 test videos exist
    assert inputs.captions == [split.captions_of(i)[0] for i in range(4)]
    assert inputs.frames.shape == (4, 4, 3, 32, 32) and inputs.frames.dtype == np.float32
    assert inputs.frame_mask.tolist() == [[1, 1, 1, 0]] * 4  # 3-second videos at 1 fps: one padded frame
    assert np.abs(inputs.frames[:, 3]).max() > 0  # padded frames are normalised zeros, not left out
    assert inputs.input_ids.dtype == np.int32 and inputs.eot.dtype == np.int32
    assert (inputs.input_ids[np.arange(4), inputs.eot] == inputs.input_ids.max(1)).all()  # EOT has the top id


def test_text_engines_trim_dynamic_graphs_and_pad_static_ones(exported, tmp_path):
    """An engine runs a query's own tokens through a graph with a dynamic ``tokens`` axis, and pads to the context
    for a graph exported with a static ``[B, L]`` (before the axis was dynamic): the embeddings agree."""
    from rap_deploy.config import RAPConfig
    from rap_deploy.engines.ort_backend import OrtEngine
    from rap_deploy.tokenizer import tokenize

    out, manifest = exported
    config = RAPConfig.from_dict(manifest["config"])
    static = onnx.load(str(out / "text_encoder.onnx"))
    static.graph.input[0].type.tensor_type.shape.dim[1].dim_value = config.context_length  # the old contract
    onnx.save(static, str(tmp_path / "text_static.onnx"))
    graphs = {g: out / f"{g}.onnx" for g in ("video_encoder", "text_encoder", "asa_head")}
    dynamic_engine = OrtEngine(graphs, config)
    static_engine = OrtEngine({**graphs, "text_encoder": tmp_path / "text_static.onnx"}, config)
    ids, eot = tokenize(["a red circle moves left", "two squares"], config.tokenizer)
    calls = []
    real_run = dynamic_engine._run
    dynamic_engine._run = lambda graph, feeds: calls.append(feeds["input_ids"].shape) or real_run(graph, feeds)
    full = dynamic_engine.encode_text(ids, eot)
    assert calls == [(2, int(eot.max()) + 1)]  # trimmed to the longest query
    np.testing.assert_allclose(static_engine.encode_text(ids, eot), full, atol=1e-6)
    np.testing.assert_allclose(static_engine.encode_text(ids[:, :int(eot.max()) + 1], eot), full, atol=1e-6)
    with pytest.raises(Exception, match="eot positions"):
        dynamic_engine.encode_text(ids[:, :3], eot)


@pytest.mark.parametrize("dataset", ["msrvtt", "msrvt"])
def test_a_wrong_data_root_or_dataset_is_refused_before_any_graph_is_traced(micro_checkpoint, tmp_path, monkeypatch,
                                                                            dataset):
    """--data-root (a folder without the dataset's annotations) and --dataset (a typo) were first read at the parity
    step, after every graph was traced (and converted to fp16): minutes on a large model to learn of a typo."""
    from rap_deploy.export import onnx_export

    traced = []

    def trace(module, spec, *args):
        traced.append(spec.name)
        raise RuntimeError("traced")

    monkeypatch.setattr(onnx_export, "trace_graph", trace)
    empty = tmp_path / "data"
    empty.mkdir()
    result = _cli("export", micro_checkpoint, "--out", tmp_path / "onnx", "--data-root", empty, "--dataset", dataset,
                  "--quiet")
    assert result.exit_code == 2 and not traced, (traced, result.output)
    assert ("MSRVTT_JSFUSION_test.csv" if dataset == "msrvtt" else "unknown") in result.output


def test_parity_inputs_decode_the_splits_clip_window(tmp_path, monkeypatch):
    """DiDeMo and ActivityNet entries carry a clip window (DiDeMo: the first 31 s, as CLIP4Clip); training and verify
    decode only that window, the export's parity inputs decoded the whole file (other frames than the pipeline's)."""
    import dataclasses

    from conftest import micro_config

    from rap_deploy.data import datasets
    from rap_deploy.data.synth_dataset import generate_synthetic_dataset
    from rap_deploy.data.video import decode_video
    from rap_deploy.export.inputs import parity_inputs

    generate_synthetic_dataset(tmp_path, videos=6, test_videos=3, seed=5, size=64, seconds=8, progress=False)
    real = datasets.load_split

    def windowed(*args, **kwargs):
        split = real(*args, **kwargs)
        split.videos[:] = [dataclasses.replace(v, end=2.0) for v in split.videos]
        return split

    monkeypatch.setattr(datasets, "load_split", windowed)
    config = micro_config()
    inputs = parity_inputs(config, data_root=tmp_path, count=3)
    split = windowed("msrvtt", tmp_path, "test", max_frames=config.frames)
    want = [decode_video(v.path, config.sampling, config.preprocess, v.start, v.end).mask for v in split.videos]
    assert inputs.frame_mask.tolist() == [m.astype(np.float32).tolist() for m in want]


def _export_with_data_root_without_videos(checkpoint: Path, synth_root: Path, tmp_path: Path) -> tuple[Path, str]:
    """Export ``checkpoint`` with a ``--data-root`` that holds the synthetic dataset's files but no videos: the data
    folder and the refusal's stderr on one line (exit 1 asserted: a dataset that lacks the videos its captions name
    is damaged data, as data-check and verify judge it; it exited 2, bad usage, where verify's same case exits 1)."""
    data = tmp_path / "data"
    data.mkdir()
    for f in synth_root.iterdir():
        if f.is_file():
            (data / f.name).write_bytes(f.read_bytes())
    res = CliRunner().invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "onnx"), "--data-root",
                                   str(data), "--quiet"])
    assert res.exit_code == 1, res.output
    return data, " ".join(res.stderr.split())


def test_export_data_root_without_videos_names_them_and_the_folder(micro_checkpoint, synth_root, tmp_path):
    data, line = _export_with_data_root_without_videos(micro_checkpoint, synth_root, tmp_path)
    # was: "(need 3 for parity; skipped: [{'video_id': 'video24', 'reason': ...}])"
    assert "{'video_id'" not in line and "(need 3 for parity; skipped video" in line, line
    assert f": {data / 'videos'} does not exist; put the videos there" in line, line
    assert not (tmp_path / "onnx").exists()


def test_export_data_root_without_videos_says_how_many_it_leaves_unnamed(micro_checkpoint, synth_root, tmp_path):
    """The parity inputs' refusal named the first 3 skipped videos and ended in '; …' whatever their number (12 here),
    where every other list in a message says how many it leaves out; it now ends in '; and 9 more'."""
    _, line = _export_with_data_root_without_videos(micro_checkpoint, synth_root, tmp_path)
    assert "…" not in line, line
    assert "(need 3 for parity; skipped video24: missing; video25: missing; video26: missing; and 9 more)" in line, line
