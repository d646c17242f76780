"""The commands as a user meets them: a wrong value is refused in one line with exit 2, before any work, and what a
command leaves out of its figures is said on the terminal, not only in its report files."""

from __future__ import annotations

from typer.testing import CliRunner

from rap_deploy.cli import app

runner = CliRunner()


def test_bench_refuses_an_unknown_dataset_and_one_without_data_root(micro_checkpoint, tmp_path):
    args = ["bench", "--checkpoint", str(micro_checkpoint), "--graphs", "text", "--batch-sizes", "1",
            "--repeats", "1", "--warmup", "0", "--no-compare-meanp", "--quiet", "--out", str(tmp_path / "b")]
    res = runner.invoke(app, [*args, "--dataset", "msrvt"])
    assert res.exit_code == 2 and "dataset 'msrvt' is unknown" in res.output
    res = runner.invoke(app, [*args, "--dataset", "msvd"])  # timed on random frames: the name would be ignored
    assert res.exit_code == 2 and "pass --data-root too" in res.output
    assert not (tmp_path / "b").exists()
