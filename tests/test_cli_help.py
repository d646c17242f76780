"""Every command's ``--help``: it runs, and its description reads as paragraphs, not as the docstring's source
lines (Typer keeps single line breaks, which showed as ragged lines at 80 columns)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from rap_deploy.cli.app import app, reflowed_help

COMMANDS = sorted(c.name for c in app.registered_commands if c.name)


def test_reflowed_help_joins_paragraph_lines_and_keeps_lists():
    doc = """First line of the summary
    wrapped in the source.

    A paragraph that goes on
    and on.

    - a list item
    - another
    """
    assert reflowed_help(doc) == ("First line of the summary wrapped in the source.\n\nA paragraph that goes on and "
                                  "on.\n\n- a list item\n- another")


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_is_reflowed(name):
    command = next(c for c in app.registered_commands if c.name == name)
    paragraphs = (command.help or "").split("\n\n")
    assert command.help and all("\n" not in p for p in paragraphs if not p.lstrip().startswith(("-", "|"))), name
    result = CliRunner().invoke(app, [name, "--help"], terminal_width=200)
    assert result.exit_code == 0 and "Usage: rapdeploy" in result.output, result.output
    assert " ".join(paragraphs[0].split()) in " ".join(result.output.split())


@pytest.mark.parametrize("folder", ["runs [old]", "x[/b]"])
def test_summaries_show_folders_with_brackets_as_they_are(folder, capsys, monkeypatch):
    """Paths went through rich markup: a folder named 'x[/b]' ended a finished command with a MarkupError traceback,
    'runs [old]' printed as 'runs '. (train's and build-engine's summaries; export's and verify's are tested with
    them.)"""
    from rap_deploy.cli.engine_cmds import _print_summary
    from rap_deploy.cli.train_cmds import _print_train_summary

    monkeypatch.setenv("COLUMNS", "400")
    recall = {"R1": 1.0, "R5": 2.0, "R10": 3.0, "MnR": 4.0}
    _print_train_summary({"run_dir": f"/w/{folder}", "best": {"epoch": 1, "t2v": recall, "v2t": recall},
                          "variant": "rap", "clip": "rap-micro", "trainable_params": 1, "total_params": 2, "steps": 3,
                          "batch_size": 4, "train_seconds": 1.0, "wall_seconds": 2.0, "world_size": 1,
                          "device": "cpu", "skipped_videos": [{"video_id": "v[1]"}], "complete": False,
                          "epochs_done": 1, "epochs": 2})
    _print_summary({"dir": f"/w/{folder}", "graphs": {}, "backend": "onnxruntime", "precision": "fp32",
                    "device": "cpu"})
    text = " ".join(capsys.readouterr().out.split())
    assert text.count(f"/w/{folder}") == 3 and "v[1]" in text, text


def _option_help(command: str, option: str) -> str:
    import typer.main

    params = typer.main.get_command(app).commands[command].params
    return " ".join(next(p for p in params if option in p.opts).help.split())


@pytest.mark.parametrize("name", COMMANDS)
def test_every_workspace_option_names_rapdeploy_home(name):
    """Every command resolves its workspace through ``workspace_root`` ($RAPDEPLOY_HOME included); demo's and
    ablate's --help named only ./rapdeploy-out."""
    import typer.main

    params = typer.main.get_command(app).commands[name].params
    if any("--workspace" in p.opts for p in params):
        assert "$RAPDEPLOY_HOME" in _option_help(name, "--workspace")


def test_demo_out_help_names_the_workspace_default_in_its_order():
    """demo --out said 'the workspace, ./rapdeploy-out or $RAPDEPLOY_HOME', as if ./rapdeploy-out came first (the
    wording 42b4a4e replaced in every --workspace help); workspace_root takes $RAPDEPLOY_HOME, else ./rapdeploy-out."""
    text = _option_help("demo", "--out")
    assert "$RAPDEPLOY_HOME, else ./rapdeploy-out" in text and "rapdeploy-out or" not in text, text


def test_pretrain_backbone_help_states_the_defaults_it_runs_with():
    """--position-init and --position-twins default to pretrain_backbone's own values; the help said only
    "Default: pretrain_backbone's", a function the user cannot see."""
    import inspect

    from rap_deploy.train.backbone import pretrain_backbone

    defaults = inspect.signature(pretrain_backbone).parameters
    assert defaults["position_init"].default == "sincos"
    assert "sincos" in _option_help("pretrain-backbone", "--position-init").split("; the default")[0]
    assert defaults["position_twins"].default is False
    assert _option_help("pretrain-backbone", "--position-twins").endswith("Default: off.")
    assert "docs/demo-history.md" in _option_help("pretrain-backbone", "--patch-keep")


def test_pretrain_backbone_out_help_names_the_file_after_clip():
    """The default --out is <workspace>/cache/backbone/<--clip>.safetensors; the help named rap-tiny.safetensors only,
    so `--clip rap-micro` wrote a file the help did not name."""
    text = _option_help("pretrain-backbone", "--out")
    assert "backbone/CLIP.safetensors" in text and "--clip" in text, text


def test_bench_engine_help_says_a_checkpoint_is_an_engine_too():
    """bench --engine takes a .pt checkpoint as the PyTorch engine (resolve_engine; its own refusal says so since
    3848930), as verify's --engine does; bench's help named engine folders and server URLs only."""
    assert ".pt checkpoint" in _option_help("bench", "--engine")
    assert ".pt" in _option_help("verify", "--engine")


def test_index_name_help_says_a_list_file_names_its_library_by_its_stem():
    """``--list paths.txt`` builds index/paths (``VideoSource.name``: the file's stem); the help said the list file's
    name."""
    from rap_deploy.library.sources import VideoSource

    assert VideoSource("list", {"path": "/x/paths.txt"}, []).name == "paths"
    assert "list file's without its extension" in _option_help("index", "--name")


def test_serve_help_lists_every_route_the_app_serves():
    """serve --help listed /search, /library, /healthz, /readyz, / and the v2 infer route, not /stats,
    /thumbnails or the v2 metadata, health and repository routes."""
    from unittest.mock import MagicMock

    from rap_deploy.engines.serving.app import create_app
    from rap_deploy.engines.serving.service import ServeOptions

    service = MagicMock()
    service.options = ServeOptions()
    paths = {r.path for r in create_app(service).routes}
    command = next(c for c in app.registered_commands if c.name == "serve")
    assert "/thumbnails" in paths and "/v2/health/live" in paths, paths
    missing = [p for p in paths if p.replace("/versions/{version}", "") not in command.help]
    assert not missing and "/v2/models/{name}/versions/{version}" in command.help, missing


def test_index_top_m_help_says_what_the_library_s_m_is_for():
    """index --top-m called M 'the search's re-rank depth', but search re-ranks its own --top-m (default 100) and
    never reads it: the library's M is the depth stage 1's recall is measured (and an ANN index tuned) at."""
    text = _option_help("index", "--top-m")
    assert "re-rank depth" not in text and "--target-recall at M" in text and "own --top-m" in text, text


def test_threads_help_says_an_engine_runs_with_the_threads_build_engine_recorded():
    """build-engine --threads N is written into the engine's manifest and every later load without --threads runs
    with N (engines/loader.py), yet build-engine's help said only "default: all cores", bench's "the libraries'
    defaults" (found by walking the README: an engine built with --threads 1 was benched at one ONNX Runtime thread
    against PyTorch at two), and demo's, verify's, index's, search's and serve's named no default."""
    assert "recorded" in _option_help("build-engine", "--threads")
    assert "recorded" in _option_help("demo", "--threads")
    for name in ("verify", "bench", "index", "search", "serve"):
        assert "build-engine --threads N" in _option_help(name, "--threads"), name


def test_search_top_m_help_says_what_zero_does():
    """search --top-m 0 is accepted (--top must be >= 1, --top-m >= 0) and ranks by stage 1 alone, every result
    marked 'not re-ranked', but the help said only 'Stage-1 candidates re-ranked by the ASA head' (found walking the
    README's search)."""
    assert "0: none" in _option_help("search", "--top-m")


@pytest.mark.parametrize("name", ["init", "info", "train", "ablate"])
def test_every_preset_help_lists_the_presets_and_their_sizes_from_one_place(name):
    """train's and ablate's --preset help wrote 'default ... or paper ...' by hand beside init's and info's, which
    listed config.PRESETS: a new preset would have been missing from two of them. Every --preset help now comes from
    config.preset_help, whose sizes are those preset_changes sets; the README's preset paragraph names every preset and
    every command that takes one."""
    from pathlib import Path

    from rap_deploy.config import PRESET_SIZES, PRESETS, RAPConfig, preset_changes, preset_help

    assert " ".join(preset_help().split()) in _option_help(name, "--preset")
    assert all(f"{preset} (" in preset_help() for preset in PRESETS)
    default, paper = RAPConfig(), preset_changes("paper", 512)
    assert (preset_changes("default", 512), default.lorm_rank, default.asa_dim) == ({}, 4, 128)
    assert PRESET_SIZES["default"].startswith("LoRM rank 4, ASA width 128") and paper == {"asa_dim": 512,
                                                                                          "lorm_rank": 2}
    assert "joint width, LoRM rank 2" in PRESET_SIZES["paper"]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    paragraph = " ".join(readme[readme.index("Presets (`--preset` on"):].split("\n\n")[0].split())
    assert f"`{name}`" in paragraph.split(")")[0] and all(f"`{p}`" in paragraph for p in PRESETS), paragraph


def test_build_engine_help_says_what_exit_1_and_2_mean():
    """build-engine's --help never said that a new engine failing its comparison with PyTorch exits 1 and keeps the
    previous folder, nor that a missing TensorRT or CUDA provider exits 2 (export's, verify's and demo's say theirs)."""
    result = CliRunner().invoke(app, ["build-engine", "--help"], terminal_width=200)
    text = " ".join(result.output.split())
    assert result.exit_code == 0
    assert "Exits 1 when the new engine does not match the PyTorch reference" in text, text
    assert "the previous engine folder is kept" in text and "2 for bad usage or a backend this machine lacks" in text


def test_train_help_says_what_exit_1_and_2_mean_and_that_eval_initial_is_off():
    """train's --help said neither what exit 1 (a diverged run, a damaged dataset) and exit 2 (bad usage) mean, nor
    whether the starting model is evaluated by default (--eval-initial: it is not; every other default was stated)."""
    result = CliRunner().invoke(app, ["train", "--help"], terminal_width=200)
    text = " ".join(result.output.split())
    assert result.exit_code == 0
    assert "Exits 1 when training diverges" in text and "2 for bad usage" in text, text
    assert "(logged as epoch 0; default: off)" in _option_help("train", "--eval-initial")


def test_train_help_says_a_damaged_checkpoint_exits_1_as_it_does(tmp_path):
    """train's --help said exit 1 meant a diverged run or damaged annotation files, and that missing or undecodable
    videos are skipped; a damaged --checkpoint (or the run's last.pt) exits 1 too, and so does a split none of whose
    videos can be read (test_train: 'no usable training video'), which the help did not say."""
    result = CliRunner().invoke(app, ["train", "--help"], terminal_width=200)
    text = " ".join(result.output.split())
    assert "a checkpoint (--checkpoint, the run's last.pt) or the dataset's annotation files are damaged" in text, text
    assert "or no training video can be read (missing or undecodable videos are otherwise skipped" in text, text
    damaged = tmp_path / "init.pt"
    damaged.write_bytes(b"PK\x03\x04" + b"\0" * 60)  # a zip archive's start, nothing after it
    res = CliRunner().invoke(app, ["train", "--dataset", "msrvtt", "--data-root", str(tmp_path), "--checkpoint",
                                   str(damaged), "--out", str(tmp_path / "run"), "--quiet"])
    assert res.exit_code == 1 and "damaged or truncated" in res.output, res.output


def test_synth_size_help_names_the_sizes_decord_cannot_read_back():
    """synth --size said only '(even)', so --size 48 (even) wrote a video and was refused: decord cannot read
    MPEG-4 back at 16, 24, 48 or 72 px (synth_dataset._check_readable); the help did not say which sizes work."""
    text = _option_help("synth", "--size")
    assert "even, at least 16" in text and "32, 64 and 96" in text and "16, 24, 48 and 72" in text, text


def test_ablate_heldout_gallery_help_says_it_must_divide_the_heldout_videos():
    """ablate --heldout-gallery's help (range 0 to 5000) never said that G must divide --heldout-videos: 20 videos in
    galleries of 7 were refused (exit 2, 'does not divide') only once typed (heldout_eval.check_gallery)."""
    assert "G must divide --heldout-videos N" in _option_help("ablate", "--heldout-gallery")


def test_init_reference_backbone_help_says_a_random_backbone_is_stored_anyway(tmp_path):
    """init --reference-backbone with --pretrained none (init's default) wrote a checkpoint holding the backbone
    weights, as it must (checkpoint.new_checkpoint: nothing could rebuild random weights), while the help promised
    only a reference by sha256."""
    from rap_deploy.checkpoint import load_checkpoint

    assert "a random backbone, --pretrained none, is always stored" in _option_help("init", "--embed-backbone")
    out = tmp_path / "ref.pt"
    res = CliRunner().invoke(app, ["init", "--clip", "rap-micro", "--frames", "4", "--reference-backbone", "--out",
                                   str(out)])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(out).backbone_state is not None


def test_train_frames_help_says_a_checkpoint_keeps_its_own(micro_checkpoint, tmp_path):
    """train --frames/--context-length said 'default: 12 (32) for msrvtt', but with --checkpoint the checkpoint's own
    frame count and context length are used (they are fixed by its weights): a 4-frame checkpoint trains at 4."""
    from rap_deploy.checkpoint import load_checkpoint

    for option in ("--frames", "--context-length"):
        assert "default: the --checkpoint's, else" in _option_help("train", option)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--dataset", "msrvtt", "--data-root", str(tmp_path), "--checkpoint",
                                   str(micro_checkpoint), "--out", str(out), "--quiet"])
    assert res.exit_code == 2 and "MSRVTT_train.9k.csv" in res.output  # the model was built: 4 frames, no conflict
    assert load_checkpoint(micro_checkpoint).config.frames == 4


def _rendered_option_help(command: str, option: str) -> str:
    """``option``'s help as ``rapdeploy COMMAND --help`` prints it (200 columns): its row and the rows continuing it
    (blank in the options' column), the panel's borders dropped, words joined by single spaces."""
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip("│ ").startswith(option + " "))
    column = lines[start].index(option)
    rows = [lines[start][column + len(option):]]
    for line in lines[start + 1:]:
        if len(line) <= column or line[column] != " " or not line.strip("│ "):
            break
        rows.append(line)
    return " ".join(" ".join(rows).replace("│", " ").split())


@pytest.mark.parametrize("name", ["search", "index", "verify", "bench"])
def test_engine_help_says_a_served_engine_url_is_taken(name):
    """search, index, verify and bench take --engine http://HOST:PORT (a running `rapdeploy serve` or Triton: the
    remote engine); their --help must say so, as it does for a folder or checkpoint."""
    assert "http://HOST:PORT" in _rendered_option_help(name, "--engine")


def test_serve_engine_help_says_a_server_url_is_not_taken():
    """serve's --engine runs the engine in its own process and refuses a server's URL (load_served_engine); its help
    named the folders it takes but, beside the other commands' help that offers URLs, not that it takes no URL."""
    from rap_deploy.engines.serving.server import load_served_engine
    from rap_deploy.errors import UsageError

    said = _rendered_option_help("serve", "--engine")
    assert "not the http://HOST:PORT of a running server" in said, said
    with pytest.raises(UsageError, match="is a server; rapdeploy serve runs a local engine folder"):
        load_served_engine("http://127.0.0.1:9")


def test_search_json_help_names_every_key_of_the_object_it_prints():
    """search --json's help listed results (rank, video_id, path, score, stage1_rank) and timings_ms, but each
    result also carries stage1_score and reranked (false past --top-m, where score is the stage-1 score: a script
    that does not know it ranks stage-1 scores as re-ranked ones), timings_ms its five parts and a truncated query
    warnings (the README's object)."""
    text = _option_help("search", "--json")
    for key in ("query", "rank", "video_id", "path", "score", "stage1_rank", "stage1_score", "reranked", "timings_ms",
                "text", "stage1", "rerank", "total", "rerank_read", "warnings"):
        assert re.search(rf"\b{key}\b", text), key
