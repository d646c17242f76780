"""``--data-root DATA/MSRVTT_data.json`` (the annotation file itself, not the folder holding it) was refused with
'is not a folder; pass --data-root pointing at the dataset', leaving the user to work out which folder that is. The
refusal now names the folder holding the file, shell-quoted, as the likely --data-root (or RAPDEPLOY_DATA), and
following it works."""

from __future__ import annotations

import shlex

from typer.testing import CliRunner

from rap_deploy.cli.app import app


def _one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]


def test_a_file_given_as_data_root_names_its_folder_shell_quoted(tmp_path):
    folder = tmp_path / "my data" / "it's msrvtt"
    folder.mkdir(parents=True)
    annotation = folder / "MSRVTT_data.json"
    annotation.write_text("{}")
    said = _one_line(CliRunner().invoke(app, ["data-check", "--dataset", "msrvtt", "--data-root", str(annotation)]))
    assert said.startswith(f"error: dataset folder {annotation} is not a folder but a file; "), said
    suggested = said.split("--data-root ", 1)[1]
    assert shlex.split(suggested) == [str(folder)], said


def test_a_file_in_rapdeploy_data_names_its_folder_for_the_variable(tmp_path, monkeypatch):
    folder = tmp_path / "my data"
    folder.mkdir()
    annotation = folder / "MSRVTT_data.json"
    annotation.write_text("{}")
    monkeypatch.setenv("RAPDEPLOY_DATA", str(annotation))
    said = _one_line(CliRunner().invoke(app, ["data-check", "--dataset", "msrvtt"]))
    assert f"(from RAPDEPLOY_DATA={annotation}) is not a folder but a file" in said, said
    quoted = shlex.quote(str(folder))
    assert f"set RAPDEPLOY_DATA={quoted} " in said and said.endswith(f"pass --data-root {quoted}"), said


def test_following_the_suggestion_reads_the_dataset(synth_root):
    said = _one_line(CliRunner().invoke(app, ["data-check", "--dataset", "msrvtt", "--data-root",
                                              str(synth_root / "MSRVTT_data.json")]))
    suggested = shlex.split(said.split("--data-root ", 1)[1])
    followed = CliRunner().invoke(app, ["data-check", "--dataset", "msrvtt", "--data-root", *suggested, "--quiet",
                                        "--no-cache"])
    assert followed.exit_code == 0, followed.output
