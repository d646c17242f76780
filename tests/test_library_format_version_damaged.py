"""A library manifest whose format_version is no integer was told to upgrade rapdeploy (exit 2); every library
rapdeploy writes records an integer, so the manifest is damaged: exit 1, naming the file, the value (bounded) and the
fix (rebuild it with `rapdeploy index ... --force`, or restore the file). A newer version still asks for an upgrade."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rap_deploy.cli.app import app
from rap_deploy.errors import DamagedArtifactError, UsageError
from rap_deploy.library.manifest import read_manifest

runner = CliRunner()


def _library(tmp_path: Path, version) -> Path:
    lib = tmp_path / "my libs" / "clips"
    lib.mkdir(parents=True)
    (lib / "manifest.json").write_text(json.dumps({"format": "rapdeploy.library", "format_version": version}))
    return lib


@pytest.mark.parametrize("version,shown", [
    ("x", "'x'"), (1.5, "1.5"), ([1] * 100_000, "[1, 1, 1, 1, 1, 1, ...]"), (True, "True"), ("9" * 100_000, "'999"),
], ids=["text", "float", "long-list", "bool", "padded-digits"])
def test_a_non_integer_format_version_is_damage(tmp_path: Path, version, shown: str) -> None:
    lib = _library(tmp_path, version)
    with pytest.raises(DamagedArtifactError) as err:
        read_manifest(lib)
    message = str(err.value)
    assert message.startswith(f"{lib / 'manifest.json'}: format_version {shown}"), message[:300]
    assert message.endswith(f"is not an integer; the library manifest is damaged: rebuild the library (`rapdeploy "
                            f"index ... --out {shlex.quote(str(lib))} --force`) or restore the file from a copy")
    assert "upgrade" not in message and len(message) < 300 + 2 * len(str(lib)), len(message)


def test_search_exits_1_for_a_damaged_format_version_and_2_for_a_newer_one(tmp_path: Path) -> None:
    res = runner.invoke(app, ["search", "a red circle", "--library", str(_library(tmp_path / "a", "x"))])
    assert res.exit_code == 1 and "the library manifest is damaged" in " ".join(res.stderr.split()), res.output
    res = runner.invoke(app, ["search", "a red circle", "--library", str(_library(tmp_path / "b", 99))])
    line = " ".join(res.stderr.split())
    assert res.exit_code == 2 and "has library format 99, newer than the format 1 this rapdeploy" in line, line


def test_a_newer_format_version_asks_for_an_upgrade(tmp_path: Path) -> None:
    """Worded as for engine and export manifests (bounds.check_format_version): the rapdeploy that wrote it when the
    manifest says, this one's version, and the command that builds the library again with this one; it said only
    'this rapdeploy reads up to 1: upgrade rapdeploy'."""
    from rap_deploy import __version__

    lib = _library(tmp_path, 99)
    manifest = json.loads((lib / "manifest.json").read_text())
    (lib / "manifest.json").write_text(json.dumps({**manifest, "rapdeploy": "9.0.0"}))
    with pytest.raises(UsageError) as err:
        read_manifest(lib)
    assert not isinstance(err.value, DamagedArtifactError)
    assert str(err.value) == (f"{lib / 'manifest.json'} has library format 99 (written by rapdeploy 9.0.0), newer "
                              f"than the format 1 this rapdeploy {__version__} reads; upgrade rapdeploy, or re-create "
                              f"it with this one: `rapdeploy index ... --out {shlex.quote(str(lib))} --force`")
    assert shlex.split(str(err.value).split("`")[1])[-3:] == ["--out", str(lib), "--force"]


@pytest.mark.parametrize("version,shown", [(0, "0"), (-1, "-1"), (-10 ** 4000, "-1000")], ids=["zero", "-1", "huge"])
def test_a_format_version_below_1_is_damage(tmp_path: Path, version: int, shown: str) -> None:
    """0 or a negative version was taken for a library this rapdeploy reads; every library rapdeploy writes records
    1 (FORMAT_VERSION; never 0), so it is damage as the non-integers are (exit 1, the value bounded, the fix)."""
    lib = _library(tmp_path, version)
    with pytest.raises(DamagedArtifactError) as err:
        read_manifest(lib)
    message = str(err.value)
    assert message.startswith(f"{lib / 'manifest.json'}: format_version {shown}"), message[:300]
    assert "is below 1, which no rapdeploy writes; the library manifest is damaged: rebuild the library " \
        f"(`rapdeploy index ... --out {shlex.quote(str(lib))} --force`) or restore the file from a copy" in message
    assert len(message) < 300 + 2 * len(str(lib)), len(message)


def test_a_whole_library_manifest_of_version_0_is_refused(micro_checkpoint, tmp_path: Path) -> None:
    """Before, a structurally valid manifest with format_version 0 read as a library (only the structure checks
    followed the version's); search now exits 1 naming the version."""
    from test_library_manifest_bounded import _manifest

    from rap_deploy.engines.loader import load_engine

    manifest = _manifest(load_engine(micro_checkpoint))
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "manifest.json").write_text(json.dumps(manifest))
    assert read_manifest(lib)["format_version"] == 1
    (lib / "manifest.json").write_text(json.dumps({**manifest, "format_version": 0}))
    res = runner.invoke(app, ["search", "a red circle", "--library", str(lib), "--engine", str(micro_checkpoint)])
    line = " ".join(res.stderr.split())
    assert res.exit_code == 1 and "format_version 0 is below 1, which no rapdeploy writes" in line, res.output


def test_a_library_records_the_rapdeploy_that_wrote_it(micro_checkpoint, synth_root, tmp_path: Path) -> None:
    """The newer-format refusal names the rapdeploy that wrote the library only if the manifest records it: index
    writes it at the top, as export does."""
    import shutil

    from rap_deploy import __version__

    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(synth_root / "videos" / "video30.mp4", clips / "video30.mp4")
    lib = tmp_path / "lib"
    res = runner.invoke(app, ["index", "--videos", str(clips), "--engine", str(micro_checkpoint), "--out", str(lib),
                              "--cache-dir", str(tmp_path / "cache"), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert read_manifest(lib)["rapdeploy"] == __version__


def test_one_format_version_check_for_the_three_manifests() -> None:
    """bounds.check_format_version: an engine or export manifest without a version is of format 0 (the first ones
    recorded none), a library's is damage; below that first version nothing rapdeploy writes, so damage (exit 1)."""
    from rap_deploy import bounds
    from rap_deploy.library import manifest as library_manifest

    assert bounds.check_format_version({}, "m.json", "engine", 1, "damaged") == 0
    assert bounds.check_format_version({"format_version": 1}, "m.json", "library", 1, "damaged", oldest=1) == 1
    for manifest, oldest, said in (({}, 1, "format_version None is not an integer"),
                                   ({"format_version": -1}, 0, "format_version -1 is below 0, which no rapdeploy")):
        with pytest.raises(DamagedArtifactError, match=f"^m.json: {said}.*; damaged$"):
            bounds.check_format_version(manifest, "m.json", "engine", 1, "damaged", oldest=oldest)
    assert library_manifest.check_format_version is bounds.check_format_version
