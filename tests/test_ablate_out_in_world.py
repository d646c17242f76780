"""`rapdeploy ablate --out` inside the world's own files (its dataset, caches, held-out splits) is refused."""

from __future__ import annotations

from typer.testing import CliRunner

from rap_deploy.cli.app import app


def test_an_out_inside_the_worlds_files_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """`ablate --world W --out W/data` exited 0 and wrote its runs into the world's dataset folder, so the next plain
    call found the dataset changed and synthesised it again. An --out equal to or inside the world's data/, cache/
    or a heldout-N/ folder is refused now (exit 2, naming the folder and the fix), before the world is made; the
    world folder itself stays allowed."""
    from rap_deploy.cli.ablate_cmds import _check_ablate_folders

    world = tmp_path / "w"
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for out, folder in ((world / "data", "data"), (world / "data" / "runs", "data"), (world / "cache", "cache"),
                        (world / "cache" / "frames" / "x", "cache"), (world / "heldout-8", "heldout-8"),
                        (world / "ablation" / ".." / "data", "data"), ("w/heldout-800/abl", "heldout-800")):
        res = runner.invoke(app, ["ablate", "--tiny", "--world", str(world), "--out", str(out), "--rows",
                                  "zero_shot", "--seeds", "0", "--quiet"])
        assert res.exit_code == 2, (out, res.output)
        assert f"is inside the world's {world / folder} folder" in res.output, res.output
        assert f"pass an --out outside it, e.g. {world / 'ablation'}" in res.output and "Traceback" not in res.output
        assert not world.exists()  # refused before the world (or a lock file in it) was made
    for allowed in (world, world / "ablation", world / "data-runs", tmp_path / "elsewhere"):
        assert _check_ablate_folders(world.resolve(), allowed) == allowed
