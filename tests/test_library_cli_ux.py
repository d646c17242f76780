"""``rapdeploy index`` / ``search`` as a user meets them: paths of the wrong kind, the engine an update runs with,
and what an interrupted build says (each a one-line message with its exit code, driven through the CLI)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rap_deploy.cli import app

runner = CliRunner()


@pytest.mark.parametrize("option", ["--videos", "--list"])
def test_a_path_of_the_other_kind_is_named_as_such(tmp_path, micro_checkpoint, option):
    """``--videos clip.mp4`` said 'video folder clip.mp4 does not exist' and ``--list DIR`` 'list file DIR does not
    exist', though both exist: the message now says what the path is and which option takes it."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00")
    given, other = (clip, "--list FILE") if option == "--videos" else (tmp_path, "--videos DIR")
    res = runner.invoke(app, ["index", option, str(given), "--out", str(tmp_path / "lib"), "--engine",
                              str(micro_checkpoint)])
    assert res.exit_code == 2, res.output
    line = res.stderr.strip()
    assert "\n" not in line and "does not exist" not in line, line
    assert f"{option} {given} is a {'file' if option == '--videos' else 'folder'}" in line and other in line


def _clips(synth_root: Path, folder: Path, count: int) -> None:
    folder.mkdir(exist_ok=True)
    for video in sorted((synth_root / "videos").glob("*.mp4"))[:count]:
        shutil.copy(video, folder / video.name)


def test_add_encodes_with_the_engine_that_built_the_library(tmp_path, synth_root, micro_checkpoint):
    """``index --videos DIR --name clips --add`` (the README's update) took the workspace's latest engine, where
    ``search`` takes the one that built the library: with no engine in the workspace it stopped ('no engine in …'),
    and with another model's engine built there since, it refused the library as another model's. It now encodes
    with the engine that built the library while that exists, as search does."""
    workspace, clips, lib = tmp_path / "ws", tmp_path / "clips", tmp_path / "lib"
    _clips(synth_root, clips, 2)
    common = ["--videos", str(clips), "--out", str(lib), "--workspace", str(workspace), "--cache-dir",
              str(tmp_path / "cache"), "--json"]
    first = runner.invoke(app, ["index", *common, "--engine", str(micro_checkpoint)])
    assert first.exit_code == 0, first.output
    _clips(synth_root, clips, 3)
    added = runner.invoke(app, ["index", *common, "--add"])  # the workspace has no engine at all
    assert added.exit_code == 0, added.output
    report = json.loads(added.stdout)
    assert (report["added"], report["videos"]) == (1, 3)


def _other_weights(path: Path) -> Path:
    """A rap-micro checkpoint at ``path`` with other adapter weights than ``micro_checkpoint``'s."""
    from conftest import micro_config, randomize_adapters

    from rap_deploy.checkpoint import checkpoint_from_model, new_checkpoint, save_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec

    ckpt, model = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
    randomize_adapters(model, seed=7)
    save_checkpoint(checkpoint_from_model(model, ckpt), path)
    return path


def test_add_with_another_models_engine_says_how_to_update(tmp_path, synth_root, micro_checkpoint):
    """The refusal of another model's engine told an ``index --add`` to 'search it with an engine of the model that
    built it'; it now says how to update it (the builder's engine, the default), or where else to index."""
    other = _other_weights(tmp_path / "other.pt")
    clips, lib = tmp_path / "clips", tmp_path / "lib"
    _clips(synth_root, clips, 2)
    common = ["--videos", str(clips), "--out", str(lib), "--cache-dir", str(tmp_path / "cache")]
    assert runner.invoke(app, ["index", *common, "--engine", str(micro_checkpoint)]).exit_code == 0
    _clips(synth_root, clips, 3)
    res = runner.invoke(app, ["index", *common, "--add", "--engine", str(other)])
    assert res.exit_code == 2, res.output
    line = res.stderr.strip()
    assert "another model" in line and "\n" not in line
    assert "search it" not in line and "update it with an engine of the model that built it" in line
    assert "--out NEW_LIB" in line and "--force" in line


def test_an_engine_given_without_videos_is_checked_and_said_unused(tmp_path, synth_root, micro_checkpoint):
    """``index --remove ID --engine E`` and a stage-1 retune (``--ann hnsw --engine E``) never loaded E: an engine
    of other weights passed without a word, and the user could not tell that E encoded nothing. E is now checked
    against the library's model (other weights: exit 2, nothing changed, as with videos), and one stderr note says it
    was not used and why."""
    clips, lib = tmp_path / "clips", tmp_path / "lib"
    _clips(synth_root, clips, 3)
    built = runner.invoke(app, ["index", "--videos", str(clips), "--out", str(lib), "--engine", str(micro_checkpoint),
                                "--cache-dir", str(tmp_path / "cache")])
    assert built.exit_code == 0, built.output
    gone = sorted(p.stem for p in clips.glob("*.mp4"))[0]
    before = (lib / "manifest.json").read_bytes()
    other = runner.invoke(app, ["index", "--out", str(lib), "--remove", gone, "--engine",
                                str(_other_weights(tmp_path / "other.pt"))])
    assert other.exit_code == 2, other.output
    assert "another model" in other.stderr and "other weights" in other.stderr, other.stderr
    assert (lib / "manifest.json").read_bytes() == before
    for args in (["--remove", gone], ["--ann", "hnsw"]):
        res = runner.invoke(app, ["index", "--out", str(lib), *args, "--engine", str(micro_checkpoint), "--json"])
        assert res.exit_code == 0, res.output
        notes = [line for line in res.stderr.splitlines() if "--engine" in line]
        assert len(notes) == 1 and "not otherwise used" in notes[0] and "without videos" in notes[0], res.stderr
        assert ("--remove drops rows" in notes[0]) == (args[0] == "--remove")
        assert json.loads(res.stdout)["videos"] == 2


def test_ctrl_c_during_index_says_how_to_resume_and_the_re_run_resumes(tmp_path, synth_root, micro_checkpoint,
                                                                        monkeypatch):
    """Ctrl-C during ``index`` said only 'error: interrupted' (exit 130), though re-running the command resumes the
    build with its finished shards (README 'Resume'); the line now says so, and the re-run does it."""
    import rap_deploy.library.builder as builder

    clips = tmp_path / "clips"
    _clips(synth_root, clips, 3)
    args = ["index", "--videos", str(clips), "--out", str(tmp_path / "lib"), "--engine", str(micro_checkpoint),
            "--shard-size", "1", "--cache-dir", str(tmp_path / "cache"), "--json"]
    encode, calls = builder.encode_shard, []

    def ctrl_c_at_the_second_shard(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return encode(*a, **kw)

    monkeypatch.setattr(builder, "encode_shard", ctrl_c_at_the_second_shard)
    stopped = runner.invoke(app, args)
    assert stopped.exit_code == 130, stopped.output
    line = stopped.stderr.strip()
    assert "\n" not in line and line.startswith("error: interrupted (Ctrl-C)")
    assert "re-run the same command to resume" in line
    monkeypatch.setattr(builder, "encode_shard", encode)
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    report = json.loads(resumed.stdout)
    assert (report["videos"], report["shards_resumed"], report["shards_written"]) == (3, 1, 2)


def test_add_with_force_is_refused_before_anything_is_encoded(tmp_path, synth_root, micro_checkpoint):
    """``index --add --force`` re-encoded every video of the library (measured: 'added 7' of 7, where --add alone
    adds none), the opposite of what --add promises; the pair is now refused, one line, exit 2, nothing written."""
    clips, lib = tmp_path / "clips", tmp_path / "lib"
    _clips(synth_root, clips, 2)
    common = ["index", "--videos", str(clips), "--out", str(lib), "--engine", str(micro_checkpoint), "--cache-dir",
              str(tmp_path / "cache")]
    assert runner.invoke(app, common).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in lib.rglob("*")}
    res = runner.invoke(app, [*common, "--add", "--force"])
    assert res.exit_code == 2, res.output
    line = res.stderr.strip()
    assert "\n" not in line and "--add" in line and "--force" in line, line
    assert {p: p.stat().st_mtime_ns for p in lib.rglob("*")} == before


def test_library_paths_served_to_clients_are_absolute(tmp_path, synth_root, micro_ort_engines, monkeypatch):
    """Indexed and served from a folder with relative paths (as the README's commands are), ``serve``'s ``/library``
    gave the library's ``path`` and the building engine's ``graphs`` relative to the folder the server and ``index``
    ran in ('ws/index/msrvtt-test'), which a client cannot resolve; both are absolute now."""
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.library import open_library

    shutil.copytree(micro_ort_engines["fp32"], tmp_path / "engine")
    clips = tmp_path / "clips"
    _clips(synth_root, clips, 2)
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["index", "--videos", "clips", "--out", "lib", "--engine", "engine", "--cache-dir",
                              "cache", "--quiet"])
    assert res.exit_code == 0, res.output
    with open_library("lib", load_engine("engine", lazy=True)) as lib:
        described = lib.describe()
    assert described["path"] == str(tmp_path / "lib")
    graphs = described["built_with"]["graphs"]
    assert graphs and all(Path(f).is_absolute() and Path(f).is_file() for f in graphs.values()), graphs


@pytest.mark.parametrize("args", [[], ["--remove", "a/b"]])
def test_index_without_a_source_or_library_names_both(tmp_path, args):
    """A bare ``rapdeploy index`` answered 'say which library to change: --out LIB or --name NAME', naming no way
    to give it videos; the line now names the video sources and the library options."""
    res = runner.invoke(app, ["index", *args, "--workspace", str(tmp_path / "ws")])
    assert res.exit_code == 2, res.output
    line = res.stderr.strip()
    assert "\n" not in line and "--videos DIR" in line and "--dataset NAME" in line and "--name NAME" in line, line


def test_search_names_the_librarys_engine_when_it_is_gone(tmp_path, synth_root, micro_checkpoint):
    """A library whose engine was deleted: ``search`` without ``--engine`` fell back on the workspace's latest engine
    and said only 'no engine in …' or 'built with another model than this engine', never that the library's own
    engine was gone, nor where it had been. Both refusals now end by naming it and the fix."""
    from conftest import micro_config, randomize_adapters

    from rap_deploy.checkpoint import checkpoint_from_model, new_checkpoint, save_checkpoint
    from rap_deploy.export import export_checkpoint
    from rap_deploy.model.clip_loader import BackboneSpec

    gone = tmp_path / "gone.pt"
    shutil.copy(micro_checkpoint, gone)
    clips, lib, workspace = tmp_path / "clips", tmp_path / "lib", tmp_path / "ws"
    _clips(synth_root, clips, 2)
    assert runner.invoke(app, ["index", "--videos", str(clips), "--out", str(lib), "--engine", str(gone),
                               "--cache-dir", str(tmp_path / "cache"), "--quiet"]).exit_code == 0
    gone.unlink()
    search = ["search", "a red circle", "--library", str(lib), "--workspace", str(workspace)]
    for case in ("no engine", "another model"):
        if case == "another model":  # the workspace's latest engine is now another model's export
            ckpt, model = new_checkpoint(micro_config(), BackboneSpec.parse("rap-micro", "none"), seed=0)
            randomize_adapters(model, seed=7)
            save_checkpoint(checkpoint_from_model(model, ckpt), tmp_path / "other.pt")
            export_checkpoint(tmp_path / "other.pt", workspace / "engines" / "other", progress=False)
        res = runner.invoke(app, search)
        assert res.exit_code == 2, res.output
        line = res.stderr.strip()
        assert "\n" not in line and case in line, line
        assert f"the engine that built the library, {gone}, no longer exists" in line, line
        assert "pass --engine with an engine of the library's model" in line, line


def test_index_engine_help_says_force_takes_the_workspaces_engine():
    """index's --engine help said an existing library defaults to the engine that built it, but --force (a rebuild)
    takes the workspace's latest engine; the help now says so."""
    res = runner.invoke(app, ["index", "--help"], terminal_width=200)
    help_text = " ".join(res.output.replace("│", " ").split())
    assert "the engine that built it while it exists; else, and with --force, the workspace's latest engine" \
        in help_text, help_text


def test_index_engine_help_says_without_videos_the_engine_is_only_checked():
    """index's --engine help did not say that without videos the engine encodes nothing (it is only checked
    against the library's model); only a note on stderr said so, after the command had run."""
    res = runner.invoke(app, ["index", "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    help_text = " ".join(res.output.replace("│", " ").split())
    assert "Without videos (--dataset, --videos or --list) it is only checked against the library's model: nothing " \
        "is encoded." in help_text, help_text


def test_search_of_a_workspace_library_it_cannot_read_says_where_it_came_from(tmp_path):
    """Without --engine, search reads the library's manifest for the engine that built it before it opens the
    library; a refusal there (the workspace's latest library is of a newer rapdeploy) said only the manifest's
    problem, not what a refusal opening it says of a library nobody named: where it came from and --library."""
    lib = tmp_path / "ws" / "index" / "clips"
    lib.mkdir(parents=True)
    (lib / "manifest.json").write_text(json.dumps({"format": "rapdeploy.library", "format_version": 99}))
    res = runner.invoke(app, ["search", "a red circle", "--workspace", str(tmp_path / "ws")])
    line = " ".join(res.stderr.split())
    assert res.exit_code == 2 and "has library format 99, newer than" in line, res.output
    assert f"No --library was given, so search opened the workspace's latest library ({lib})" in line, line
    assert "pass --library LIB" in line, line
    res = runner.invoke(app, ["search", "a red circle", "--library", str(lib)])
    assert res.exit_code == 2 and "No --library was given" not in res.stderr, res.output


@pytest.mark.parametrize("command", [
    ["search", "a red circle", "--library", "{url}"],
    ["serve", "--library", "{url}", "--port", "0"],
    ["index", "--videos", "{videos}", "--out", "{url}"],
])
def test_a_server_url_given_for_a_library_folder_is_refused(tmp_path, monkeypatch, command):
    """``index --out http://127.0.0.1:8080`` wrote a library into the folder ./http:/127.0.0.1:8080, and ``search
    --library http://...`` said 'library http:/127.0.0.1:8080 does not exist; build one with `rapdeploy index --out
    http:/127.0.0.1:8080`' (a Path folds the '//'). A URL where a library folder belongs is now refused (exit 2),
    naming the URL as typed and what to pass, before any engine loads or port is bound; nothing is written."""
    monkeypatch.chdir(tmp_path)
    url = "http://127.0.0.1:8080"
    res = runner.invoke(app, [a.format(url=url, videos=tmp_path) for a in command])
    assert res.exit_code == 2, res.output
    line = res.stderr.strip()
    option = "--out" if command[0] == "index" else "--library"
    assert "\n" not in line and line.startswith(f"error: {option} {url} is a server's URL, not a library folder"), line
    assert f"--engine {url}" in line and "does not exist" not in line
    assert not (tmp_path / "http:").exists()


def test_a_bad_line_of_a_queries_file_is_named_by_its_line(tmp_path):
    """``search --queries FILE`` skips blank lines, and its refusals and truncation warnings numbered the queries
    left: a control character on line 4 after two blank lines was 'query 2 holds the control character...', which
    sent the user to line 2 of a file of thousands. They now name the file and the line, and a bad line is refused
    before any engine or library is opened (exit 2)."""
    from rap_deploy.cli.library_cmds import read_queries
    from rap_deploy.config import TokenizerConfig
    from rap_deploy.errors import UsageError
    from rap_deploy.library.queries import check_queries

    queries = tmp_path / "queries.txt"
    queries.write_text("a red circle\n\n\nblue\x01 square\n")
    res = runner.invoke(app, ["search", "--queries", str(queries), "--library", str(tmp_path / "no-library")])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == (f"error: query file {queries} line 4 holds the control character U+0001 at "
                                  "position 4: it is not text; pass a plain sentence"), res.stderr
    long = " ".join(["red circle"] * 20)
    queries.write_text(f"a red circle\n\n{long}\n")
    texts, names = read_queries(None, queries)
    assert texts == ["a red circle", long] and names == [f"query file {queries} line 1", f"query file {queries} line 3"]
    _, warnings = check_queries(texts, TokenizerConfig(), names)
    assert warnings[0] == [] and warnings[1][0].startswith(f"query file {queries} line 3 is 40 tokens long"), warnings
    assert read_queries("a red circle", None) == (["a red circle"], None)
    queries.write_text("\n  .  \n")
    with pytest.raises(UsageError, match=r"queries.txt line 2 \('\.'\) has no letter"):
        read_queries(None, queries)


def test_a_queries_file_of_more_queries_than_a_search_takes_is_refused_before_its_lines_are_checked(tmp_path,
                                                                                                     monkeypatch):
    """Since queries files name their lines (1840adf), read_queries named and checked every line before the count
    was looked at: a 64 MiB file (the size limit) of 32 million one-letter lines took 100 s and 7 GB (measured),
    where it had taken 2.5 s and 650 MB before its refusal ('33554432 queries in one call'). More non-blank lines
    than MAX_QUERIES are now refused (exit 2) as the first one over it is reached, before any line is checked, and
    before any engine or library is opened; a file of MAX_QUERIES (blank lines aside) is read as before."""
    import rap_deploy.library.queries as queries_module
    from rap_deploy.cli.library_cmds import read_queries
    from rap_deploy.library.queries import MAX_QUERIES

    checked: list[str] = []
    check_query = queries_module.check_query
    monkeypatch.setattr(queries_module, "check_query", lambda q, *a, **k: checked.append(q) or check_query(q, *a, **k))
    queries = tmp_path / "queries.txt"
    queries.write_text("\n" + "a red circle\n" * MAX_QUERIES + "\nblue square\n" + "x\n" * 5)
    res = runner.invoke(app, ["search", "--queries", str(queries), "--library", str(tmp_path / "no-library")])
    assert res.exit_code == 2, res.output
    assert " ".join(res.stderr.split()) == (f"error: query file {queries} holds more than {MAX_QUERIES:,} queries "
                                            f"(query {MAX_QUERIES + 1:,} is on line {MAX_QUERIES + 3}); one search "
                                            f"takes at most {MAX_QUERIES:,}: split the file"), res.stderr
    assert checked == []
    queries.write_text("\n" + "a red circle\n" * MAX_QUERIES + "\n\n")
    texts, names = read_queries(None, queries)
    assert len(texts) == len(checked) == MAX_QUERIES and names[-1] == f"query file {queries} line {MAX_QUERIES + 1}"


def test_a_folder_without_a_manifest_is_told_the_fix_that_applies(tmp_path, micro_checkpoint):
    """Every folder without a manifest got 'not a library (or its first build did not finish; re-run the same
    `rapdeploy index` command to complete it)': after an index that decoded no video (which drops its plan and
    leaves the folder) the re-run fails again, and for a folder of videos passed as --library there is no command to
    re-run. Only a folder with an interrupted build's plan is told to re-run now; a folder of videos is told to index
    it, any other folder to build a library."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.mp4").write_bytes(b"not a video")
    (tmp_path / "lib").mkdir()  # a folder made for it: the failed build leaves it (a new one it would remove)
    failed = runner.invoke(app, ["index", "--videos", str(broken), "--out", str(tmp_path / "lib"), "--engine",
                                 str(micro_checkpoint)])
    assert failed.exit_code == 1 and "no video could be decoded" in failed.stderr, failed.output
    assert (tmp_path / "lib").is_dir() and not (tmp_path / "lib" / "build-plan.json").exists()

    def search_error(folder: Path) -> str:
        res = runner.invoke(app, ["search", "a red circle", "--library", str(folder), "--engine",
                                  str(micro_checkpoint)])
        assert res.exit_code == 2, res.output
        return res.stderr.strip()

    empty = search_error(tmp_path / "lib")
    assert "re-run" not in empty and f"build one with `rapdeploy index ... --out {tmp_path / 'lib'}`" in empty, empty
    videos = search_error(broken)
    assert "re-run" not in videos and f"folder of videos, not a library; index it with `rapdeploy index --videos " \
        f"{broken} --out LIB`" in videos, videos
    (tmp_path / "lib" / "build-plan.json").write_text("{}")
    assert "its first build did not finish (build-plan.json is there); re-run" in search_error(tmp_path / "lib")


def test_the_index_commands_suggested_for_a_folder_with_spaces_paste_as_they_are(tmp_path, micro_checkpoint):
    """The index commands suggested for a folder that is no library put the folder in unquoted: for 'my videos' the
    pasted `rapdeploy index --videos .../my videos --out LIB` gave index two arguments. They are shell-quoted now."""
    import re
    import shlex

    from rap_deploy.errors import UsageError
    from rap_deploy.library.manifest import read_manifest

    videos, empty, missing = tmp_path / "my videos", tmp_path / "empty lib", tmp_path / "new lib"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"not a video")
    empty.mkdir()
    said = {}
    for folder in (videos, empty, missing):
        res = runner.invoke(app, ["search", "a red circle", "--library", str(folder), "--engine",
                                  str(micro_checkpoint)])
        assert res.exit_code == 2, res.output
        said[folder] = " ".join(res.stderr.split())
    with pytest.raises(UsageError) as refused:
        read_manifest(missing)
    said["read_manifest"] = str(refused.value)
    for folder, option in ((videos, "--videos"), (empty, "--out"), (missing, "--out"), ("read_manifest", "--out")):
        command = re.search(r"`(rapdeploy index [^`]*)`", said[folder])
        assert command, said[folder]
        words = shlex.split(command.group(1))
        expected = videos if folder == videos else missing if folder == "read_manifest" else folder
        assert words[words.index(option) + 1] == str(expected), said[folder]


def test_a_first_build_that_decodes_no_video_leaves_no_half_library(tmp_path, micro_checkpoint):
    """``index`` into a new folder where no video decodes exited 1 and left the folder with an empty ``shards/``: a
    half library that search then called 'not a library'. What the build created is removed now; a folder that was
    there before stays (emptied of the build's own folders), and so does one that holds other files."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.mp4").write_bytes(b"not a video")
    (tmp_path / "made").mkdir()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / ".notes").write_text("the user's")
    for name in ("new", "made", "kept"):
        out = tmp_path / name
        failed = runner.invoke(app, ["index", "--videos", str(broken), "--out", str(out), "--engine",
                                     str(micro_checkpoint), "--cache-dir", str(tmp_path / "cache")])
        assert failed.exit_code == 1 and "no video could be decoded" in failed.stderr, failed.output
        assert not (tmp_path / f".{name}.lock").exists()
    assert not (tmp_path / "new").exists()
    assert list((tmp_path / "made").iterdir()) == []
    assert [p.name for p in (tmp_path / "kept").iterdir()] == [".notes"]


def test_a_failed_first_build_removes_the_parent_folders_it_created(tmp_path, micro_checkpoint):
    """``index --out a/b/lib`` where no video decodes removed ``lib`` but left the empty ``a/b`` that taking the
    library's lock had created. They go now; a folder that was there before stays."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.mp4").write_bytes(b"not a video")
    (tmp_path / "there").mkdir()
    for out in (tmp_path / "new" / "a" / "lib", tmp_path / "there" / "a" / "b" / "lib"):
        failed = runner.invoke(app, ["index", "--videos", str(broken), "--out", str(out), "--engine",
                                     str(micro_checkpoint), "--cache-dir", str(tmp_path / "cache")])
        assert failed.exit_code == 1 and "no video could be decoded" in failed.stderr, failed.output
    assert not (tmp_path / "new").exists()
    assert (tmp_path / "there").is_dir() and list((tmp_path / "there").iterdir()) == []


def test_the_gone_files_warning_stays_one_short_line_when_a_whole_folder_is_gone():
    """index --add names the library's videos whose file no longer exists with the command that drops them; the
    command held one --remove per video, so a deleted folder of 10,000 videos (or one on a disk not mounted) made a
    line of 10,000 --remove. Up to five get the whole command; more get its form, and --json lists them all."""
    import shlex

    from rap_deploy.cli.library_cmds import gone_files_warning

    few = gone_files_warning("/data/my lib", [{"video_id": f"v{i}", "path": f"/clips/v{i}.mp4"} for i in range(2)])
    command = few.split("`")[1]
    assert shlex.split(command) == ["rapdeploy", "index", "--out", "/data/my lib", "--remove", "v0", "--remove", "v1"]
    many = gone_files_warning("/lib", [{"video_id": f"v{i}", "path": f"/clips/v{i}.mp4"} for i in range(10_000)])
    assert len(many) < 500 and "\n" not in many, many
    assert "10000 indexed video(s)" in many and "`rapdeploy index --out /lib --remove ID`" in many, many
    assert "mount" in many, many


@pytest.mark.parametrize("manifest", ['{"name": "my app", "start_url": "/"}', '["an", "array"]'],
                         ids=["web-app", "array"])
def test_index_force_over_another_programs_manifest_json_refuses_and_keeps_the_folder(micro_ort_engines, tmp_path,
                                                                                       manifest):
    """`index --out FOLDER --force` where FOLDER holds another program's manifest.json (a web app's) read it, found it
    no library, took it for a damaged one and deleted it (cd6f438 kept only rapdeploy's own export and engine
    folders). A readable manifest.json that is no library's is refused (exit 2) and the folder left as it was; an
    unreadable one is still a damaged library's, wiped."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "manifest.json").write_text(manifest, encoding="utf-8")
    (app_dir / "index.html").write_text("<html></html>", encoding="utf-8")
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "a.mp4").write_bytes(b"not decoded: the refusal comes first")
    before = {p.name: p.read_bytes() for p in app_dir.iterdir()}

    res = runner.invoke(app, ["index", "--videos", str(clips), "--out", str(app_dir), "--force",
                              "--engine", str(micro_ort_engines["fp32"]), "--quiet"])

    assert res.exit_code == 2, res.output
    assert f"{app_dir / 'manifest.json'} is not a library's" in res.output, res.output
    assert {p.name: p.read_bytes() for p in app_dir.iterdir()} == before
