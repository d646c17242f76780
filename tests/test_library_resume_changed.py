"""`rapdeploy index` re-run over a folder that changed: a killed build resumes with the videos it planned when files
were added or deleted since (the README's promise: "re-running the same command skips the finished shards"; "a
killed --add resumes with the videos it planned; files changed since wait for the next --add"), a plan of none of the
given videos is still refused, and re-running the command that built a library with undecodable files is no update.
Driven through the CLI on the micro model; the kill is a crash point (SIGKILL) after a shard is committed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def frame_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("resume_frames")


@pytest.fixture
def clips(synth_root, tmp_path):
    """A folder of copies of the synthetic test videos, and a function that adds the next one under a name."""
    videos = iter(sorted((synth_root / "videos").glob("*.mp4")))
    folder = tmp_path / "clips"
    folder.mkdir()

    def add(name: str) -> None:
        shutil.copy(next(videos), folder / f"{name}.mp4")

    return folder, add


def _args(folder, ckpt, out, cache, *extra):
    return ["index", "--videos", str(folder), "--engine", str(ckpt), "--out", str(out), "--cache-dir", str(cache),
            "--shard-size", "1", *extra]


def _killed_after_shards(args, shards: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAPDEPLOY_CRASH_AT": f"index.shard-written@{shards}"}
    killed = subprocess.run([sys.executable, "-m", "rap_deploy.cli", *args, "--quiet"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]


def _ids(out) -> list[str]:
    return sorted(vid for p in (out / "shards").glob("shard-*/videos.json")
                  for vid in json.loads(p.read_text())["video_id"])


@pytest.mark.parametrize("first", [True, False], ids=["first build", "--add"])
def test_a_killed_build_resumes_its_plan_after_files_were_added_and_deleted(clips, micro_checkpoint, frame_cache,
                                                                            tmp_path, first):
    """A build killed after 2 of its 4 shards, then one planned file deleted and a new one added: the same command
    was refused ("an interrupted build of other videos ... re-run the command that started it") however often it
    was re-run, and only --force (which deleted the finished shards) or restoring the folder went on."""
    folder, add = clips
    out = tmp_path / "lib"
    extra = [] if first else ["--add"]
    if not first:
        add("old")
        assert runner.invoke(app, _args(folder, micro_checkpoint, out, frame_cache)).exit_code == 0
    for name in ("c0", "c1", "c2", "c3"):
        add(name)
    _killed_after_shards(_args(folder, micro_checkpoint, out, frame_cache, *extra), 2)
    (folder / "c3.mp4").unlink()  # planned, not yet encoded
    add("new")  # not planned
    res = runner.invoke(app, [*_args(folder, micro_checkpoint, out, frame_cache, *extra), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert (report["shards_resumed"], report["shards_written"], report["deferred"]) == (2, 2, ["new"]), report
    assert [s["video_id"] for s in report["skipped"]] == ["c3"] and report["added"] == 3
    assert not (out / "build-plan.json").exists()
    text = runner.invoke(app, _args(folder, micro_checkpoint, out, frame_cache, "--add"))
    assert text.exit_code == 0, text.output
    assert _ids(out) == sorted(["c0", "c1", "c2", "new", *([] if first else ["old"])])


def test_a_resume_names_what_it_leaves_out_and_the_command_that_indexes_it(clips, micro_checkpoint, frame_cache,
                                                                            tmp_path):
    folder, add = clips
    out = tmp_path / "lib"
    for name in ("c0", "c1", "c2"):
        add(name)
    _killed_after_shards(_args(folder, micro_checkpoint, out, frame_cache), 1)
    add("late")
    (folder / "c2.mp4").unlink()
    res = runner.invoke(app, _args(folder, micro_checkpoint, out, frame_cache))
    assert res.exit_code == 0, res.output
    note = " ".join(res.stderr.split())
    assert "resuming the interrupted build" in note and "1 of the videos it planned are no longer given (c2)" in note
    assert "1 of the given videos are not in its plan (new or changed since it started: late)" in note, note
    assert "1 of the given videos are not in it yet (late): run the same command with --add" in note, note


def test_a_pending_build_of_none_of_the_given_videos_is_refused(clips, micro_checkpoint, frame_cache, tmp_path,
                                                                synth_root):
    """Another folder while a build is pending is another request: refused, naming why, nothing written."""
    folder, add = clips
    out = tmp_path / "lib"
    for name in ("c0", "c1", "c2"):
        add(name)
    _killed_after_shards(_args(folder, micro_checkpoint, out, frame_cache), 1)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(sorted((synth_root / "videos").glob("*.mp4"))[-1], other / "x.mp4")
    plan = (out / "build-plan.json").read_bytes()
    res = runner.invoke(app, _args(other, micro_checkpoint, out, frame_cache))
    assert res.exit_code == 2, res.output
    assert "of 3 other videos, none of them among those given" in " ".join(res.stderr.split())
    assert (out / "build-plan.json").read_bytes() == plan and not (out / "manifest.json").exists()
    shards = runner.invoke(app, _args(folder, micro_checkpoint, out, frame_cache, "--shard-size", "2"))
    assert shards.exit_code == 2 and "of shards of 1 videos" in shards.stderr, shards.output


def test_rerunning_the_command_that_built_a_library_with_undecodable_files_is_up_to_date(clips, micro_checkpoint,
                                                                                         frame_cache, tmp_path):
    """The same command twice exited 2 the second time ("3 of the given videos are not in it: pass --add") when the
    first had skipped undecodable files; it reports up to date, naming them, and --add still retries them."""
    folder, add = clips
    add("good")
    (folder / "broken.mp4").write_bytes(b"junk")
    out = tmp_path / "lib"
    assert runner.invoke(app, _args(folder, micro_checkpoint, out, frame_cache)).exit_code == 0
    again = runner.invoke(app, [*_args(folder, micro_checkpoint, out, frame_cache), "--json"])
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert report["up_to_date"] and [s["video_id"] for s in report["not_retried"]] == ["broken"]
    text = runner.invoke(app, _args(folder, micro_checkpoint, out, frame_cache))
    assert text.exit_code == 0 and "skipped as undecodable when it was built (broken" in " ".join(text.stderr.split())
    retried = json.loads(runner.invoke(app, _args(folder, micro_checkpoint, out, frame_cache, "--add", "--json"))
                         .stdout)
    assert [s["video_id"] for s in retried["skipped"]] == ["broken"] and retried["not_retried"] == []
    add("new")  # a new video besides the undecodable one: still an update that needs --add
    refused = runner.invoke(app, _args(folder, micro_checkpoint, out, frame_cache))
    assert refused.exit_code == 2, refused.output
    assert "1 of the given videos are not in it (1 more it skipped as undecodable)" in " ".join(refused.stderr.split())


def test_a_queries_file_with_a_byte_order_mark_keeps_it_out_of_the_first_query(tmp_path):
    from rap_deploy.library.query_file import read_queries

    path = tmp_path / "q.txt"
    path.write_bytes("\ufeffa red circle\r\na blue square\r\n".encode())
    texts, names = read_queries(None, path)
    assert texts == ["a red circle", "a blue square"] and names[0].endswith("line 1")
