"""A new training run is refused (exit 2) before it trains or writes anything when it would replace a finished run's
best.pt, metrics.jsonl or summary.json whose last.pt was removed, and when it could not train: a --batch-size of 1
or an epoch of one training item (the contrastive loss of one item is always 0; such runs used to exit 0 with loss
0.0000 and the adapters unchanged)."""

from __future__ import annotations

import pytest

from rap_deploy.errors import UsageError


def _options(synth_root, out, **kw):
    from rap_deploy.train.loop import TrainOptions

    base = dict(dataset="msrvtt", data_root=str(synth_root), out=str(out), clip="rap-micro", pretrained="none",
                frames=4, asa_topk=4, asa_heads=2, asa_dim=16, lorm_rank=2, epochs=1, batch_size=4, seed=0,
                max_train_videos=4, max_test_videos=4, top_m=4, epoch_unit="video")
    base.update(kw)
    return TrainOptions(**base)


@pytest.mark.parametrize("kept", [["best.pt"], ["metrics.jsonl"], ["summary.json"],
                                  ["best.pt", "metrics.jsonl", "summary.json"]])
def test_a_new_run_into_a_finished_runs_files_without_last_pt_is_refused(tmp_path, kept):
    from rap_deploy.train.loop import _resolve_run

    out = tmp_path / "kept"
    out.mkdir()
    for name in kept:
        (out / name).write_bytes(b"the finished run's " + name.encode())
    with pytest.raises(UsageError, match="holds a training run already") as err:
        _resolve_run(_options(tmp_path, out), None, None)
    assert all(name in str(err.value) for name in kept) and "last.pt" in str(err.value)
    assert all((out / name).read_bytes() == b"the finished run's " + name.encode() for name in kept)


def test_a_new_run_into_an_empty_or_new_folder_is_let_through(tmp_path):
    from rap_deploy.train.loop import _resolve_run

    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new"):
        options, template, model, state = _resolve_run(_options(tmp_path, out), None, None)
        assert options.out == str(out) and template is model is state is None


def test_the_cli_refuses_it_naming_the_files(tmp_path):
    from typer.testing import CliRunner

    from rap_deploy.cli.app import app

    out = tmp_path / "kept"
    out.mkdir()
    (out / "best.pt").write_bytes(b"kept")
    result = CliRunner().invoke(app, ["train", "--dataset", "msrvtt", "--data-root", str(tmp_path), "--clip",
                                      "rap-micro", "--out", str(out), "--epochs", "1", "--quiet"])
    assert result.exit_code == 2 and "holds a training run already (best.pt" in result.output, result.output
    assert (out / "best.pt").read_bytes() == b"kept"


def test_batch_size_one_is_refused(tmp_path):
    with pytest.raises(UsageError, match="--batch-size must be >= 2, got 1; the contrastive loss"):
        _options(tmp_path, tmp_path / "run", batch_size=1).validate()
    _options(tmp_path, tmp_path / "run", batch_size=2).validate()


def test_an_epoch_of_one_training_item_is_refused(synth_root, tmp_path):
    from rap_deploy.train.loop import train_rap

    out = tmp_path / "run"
    with pytest.raises(UsageError, match="an epoch holds 1 training item .* always 0: nothing would train"):
        train_rap(_options(synth_root, out, max_train_videos=1, cache_dir=str(tmp_path / "frames")), progress=False)
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()
