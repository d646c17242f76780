"""Concurrency review: two writers of one folder or cache entry, and commands killed half-way."""

from __future__ import annotations

import contextlib
import threading

import pytest

from rap_deploy.locks import FolderBusyError, folder_lock


def test_folder_lock_is_reentrant_per_thread_only(tmp_path):
    """A second thread of the same process taking a held lock is told the folder is busy; it used to share the
    holder's lock (two writers at once) and, when the holder released first, crashed with KeyError on its exit."""
    target = tmp_path / "out"
    held, done = threading.Event(), threading.Event()
    outcome: list[BaseException | str] = []

    def other() -> None:
        held.wait()
        try:
            with folder_lock(target, "second"):
                outcome.append("entered")
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
            outcome.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with folder_lock(target, "first"):
        with folder_lock(target, "first again"):  # the holding thread itself: re-entrant, no deadlock
            pass
        held.set()
        done.wait()
    thread.join()
    assert len(outcome) == 1 and isinstance(outcome[0], FolderBusyError), outcome
    assert "first" in str(outcome[0])
    with folder_lock(target, "third"):  # released cleanly: takeable again
        pass
    assert not (tmp_path / ".out.lock").exists()


def _tiny_video(path):
    import numpy as np

    from rap_deploy.data.synth_dataset import write_video

    frames = np.random.default_rng(0).integers(0, 255, size=(8, 32, 32, 3), dtype=np.uint8)
    write_video(path, frames, 4)
    return path


def test_a_tidy_lock_removes_only_the_empty_parents_it_created(tmp_path):
    """folder_lock(tidy_parents=True) leaves no folder it created above a target the block did not leave, and keeps
    one that holds anything (and those above it), one that was there before, and all of them when the target is
    there. Without tidy_parents the parents stay (the other commands' behaviour)."""
    (tmp_path / "before").mkdir()
    with folder_lock(tmp_path / "before" / "x" / "y" / "lib", "index", tidy_parents=True):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["before"] and not any((tmp_path / "before").iterdir())
    with folder_lock(tmp_path / "a" / "b" / "c" / "lib", "index", tidy_parents=True):
        (tmp_path / "a" / "b" / "notes.txt").write_text("the user's")
    assert not (tmp_path / "a" / "b" / "c").exists() and (tmp_path / "a" / "b" / "notes.txt").is_file()
    with folder_lock(tmp_path / "d" / "e" / "lib", "index", tidy_parents=True):
        (tmp_path / "d" / "e" / "lib").mkdir()
    assert (tmp_path / "d" / "e" / "lib").is_dir()
    with folder_lock(tmp_path / "f" / "lib", "export"):
        pass
    assert (tmp_path / "f").is_dir() and not any((tmp_path / "f").iterdir())


def test_a_lock_taken_while_another_writers_tidy_removes_its_parent_is_still_taken(tmp_path, monkeypatch):
    """A writer whose block left no target removes, after releasing its lock, the empty parents it created
    (tidy_parents). A second writer that found the parent there (so created nothing) and opened its lock file just
    after that rmdir got 'cannot create .../.lib.lock (No such file or directory); pass a writable --out' and
    stopped. Its lock file's folder is now made again and the lock taken."""
    from rap_deploy import locks

    target = tmp_path / "a" / "b" / "lib"
    open_parent = locks._open_parent

    def parent_then_tidied(t, what):  # the other writer's rmdir lands between this writer's two steps
        created = open_parent(t, what)
        (tmp_path / "a" / "b").rmdir()
        return created

    monkeypatch.setattr(locks, "_open_parent", parent_then_tidied)
    (tmp_path / "a" / "b").mkdir(parents=True)
    with folder_lock(target, "index", tidy_parents=True) as lock:
        assert lock.is_file() and lock.parent == tmp_path / "a" / "b"
    assert not (tmp_path / "a" / "b" / ".lib.lock").exists()


def test_a_killed_cache_writer_temporary_is_removed_only_when_stale_and_unlocked(tmp_path):
    """A writer killed while storing a frame cache entry left its hidden ``.tmp`` file for ever; the next look-up in
    that sub-folder now deletes it, but never a young one or one a live writer holds locked."""
    import fcntl
    import os
    import subprocess
    import sys

    from rap_deploy.config import FrameSamplingConfig, PreprocessConfig
    from rap_deploy.data.cache import STALE_TEMP_SECONDS, FrameCache

    video, root = _tiny_video(tmp_path / "clip.mp4"), tmp_path / "cache"
    code = ("import sys; from rap_deploy.config import FrameSamplingConfig as F, PreprocessConfig as P\n"
            "from rap_deploy.data.cache import FrameCache\n"
            "FrameCache(sys.argv[1]).get(sys.argv[2], F(max_frames=4), P(image_size=16))")
    killed = subprocess.run([sys.executable, "-c", code, str(root), str(video)], timeout=120,
                            env={**os.environ, "RAPDEPLOY_CRASH_AT": "cache.entry-written"})
    assert killed.returncode == -9
    (temp,) = root.rglob(".*.tmp")
    assert not list(root.rglob("*.npz"))

    def store_again() -> None:  # the entry is missing (or removed), so it is decoded and stored into temp's folder
        for entry in root.rglob("*.npz"):
            entry.unlink()
        FrameCache(root).get(video, FrameSamplingConfig(max_frames=4), PreprocessConfig(image_size=16))
        assert len(list(root.rglob("*.npz"))) == 1

    store_again()
    assert temp.exists()  # young: it may be a writer that has not locked it yet
    old = temp.stat().st_mtime - STALE_TEMP_SECONDS - 60
    os.utime(temp, (old, old))
    fd = os.open(temp, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a live writer (stopped for long) holds it
        store_again()
        assert temp.exists()
    finally:
        os.close(fd)
    hit = FrameCache(root)  # a look-up served from the cache cleans too: a complete cache is not left as it is
    hit.get(video, FrameSamplingConfig(max_frames=4), PreprocessConfig(image_size=16))
    assert hit.hits == 1 and not temp.exists()
    assert [p.name for p in root.rglob("*") if p.is_file()] == [p.name for p in root.rglob("*.npz")]


def _no_space(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_frame_cache_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    """A frame cache that cannot store an entry (ENOSPC) raised the OSError of its hidden temporary file; it is one
    line naming the video and the cache (exit 2), the temporary removed."""
    import numpy as np

    from rap_deploy.config import FrameSamplingConfig, PreprocessConfig
    from rap_deploy.data.cache import FrameCache, FrameCacheError
    from rap_deploy.errors import UsageError

    video, root = _tiny_video(tmp_path / "clip.mp4"), tmp_path / "cache"
    monkeypatch.setattr(np, "savez_compressed", _no_space)
    with pytest.raises(FrameCacheError) as info:
        FrameCache(root).get(video, FrameSamplingConfig(max_frames=4), PreprocessConfig(image_size=16))
    message = str(info.value)
    assert "\n" not in message and "No space left on device" in message and str(root) in message, message
    assert info.value.exit_code == 2 and not [p for p in root.rglob("*") if p.is_file()]
    # not a UsageError, which the server's thumbnails take for a video that no longer decodes (a 404 blaming it)
    assert not isinstance(info.value, UsageError)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_full_frame_cache_in_a_dataloader_worker_is_one_line(synth_root, tmp_path, monkeypatch, workers):
    """A training video whose frames could not be stored in the frame cache mid-run (the disk filled up) came back
    from a DataLoader worker as a multi-line error holding the worker's traceback; it is the cache's one line (exit
    2), from a worker as from the main process."""
    import numpy as np

    from rap_deploy.data.datasets import VideoCaptionDataset
    from rap_deploy.errors import RapDeployError
    from rap_deploy.train.loop import TrainOptions, train_rap

    cache = tmp_path / "frames"
    prepare = VideoCaptionDataset.prepare

    def prepare_then_fill_the_disk(self, progress=False):
        done = prepare(self, progress)
        for entry in cache.rglob("*.npz"):  # the epoch decodes and stores again, on a disk now full
            entry.unlink()
        monkeypatch.setattr(np, "savez_compressed", _no_space)
        return done

    monkeypatch.setattr(VideoCaptionDataset, "prepare", prepare_then_fill_the_disk)
    options = TrainOptions(dataset="msrvtt", data_root=str(synth_root), out=str(tmp_path / "run"), clip="rap-micro",
                           pretrained="none", frames=4, asa_topk=4, asa_heads=2, asa_dim=16, lorm_rank=2, epochs=1,
                           batch_size=8, lr=5e-3, warmup=1, seed=3, max_test_videos=8, cache_dir=str(cache), top_m=4,
                           epoch_unit="video", num_workers=workers)
    with pytest.raises(RapDeployError) as info:
        train_rap(options, progress=False)
    message = str(info.value)
    assert "\n" not in message and "No space left on device" in message and "frame cache" in message, message
    assert info.value.exit_code == 2


@pytest.mark.parametrize("new", ["valid", "unchecked"])
def test_an_engine_swapped_while_it_loads_is_loaded_again(micro_ort_engines, tmp_path, monkeypatch, new):
    """`build-engine --force` swapping a new engine folder in while verify/serve loads the old one: the load checked
    the old manifest's hashes, then opened the new folder's graphs, which no check had seen (reproduced with a new
    folder whose graph its manifest does not describe: it loaded without a word). The load now notices the swap
    (the folder's inode changed) and loads the folder again: a valid new engine loads, an unchecked one is refused."""
    import shutil

    from rap_deploy.engines import manifest as manifest_module
    from rap_deploy.engines.loader import load_engine
    from rap_deploy.errors import CheckFailedError
    from rap_deploy.folder_swap import swap_into_place

    dest, staged = tmp_path / "engine", tmp_path / ".engine.partial-1"
    shutil.copytree(micro_ort_engines["fp32"], dest)
    if new == "valid":
        shutil.copytree(micro_ort_engines["damaged"], staged)
    else:  # the old manifest, and the damaged graph it does not describe
        shutil.copytree(micro_ort_engines["fp32"], staged)
        graph = manifest_module.read_manifest(staged)["graphs"]["video_encoder"]["file"]
        shutil.copyfile(micro_ort_engines["damaged"] / graph, staged / graph)
    verify_files = manifest_module.verify_files

    def verify_then_swap(engine_dir, manifest):
        verify_files(engine_dir, manifest)
        if staged.exists():  # the build commits its new folder just after the old one's hashes were checked
            swap_into_place(staged, dest)

    monkeypatch.setattr(manifest_module, "verify_files", verify_then_swap)
    if new == "valid":
        load_engine(dest).close()
        assert manifest_module.read_manifest(dest).get("damaged_initializer")
    else:
        with pytest.raises(CheckFailedError, match="video_encoder"):
            load_engine(dest)


def test_an_export_swapped_during_a_build_is_refused(micro_ort_engines, tmp_path, monkeypatch):
    """`export --force` swapping a new export in while `build-engine` builds from the old one: the build read the old
    manifest (and checked its hashes), then the graphs by path, so the engine recorded one export and held the
    other's graphs (reproduced: a swap at the start of the graph build; the engine was committed). It is now refused
    before the commit (exit 1), the engine folder left as it was."""
    import shutil

    from rap_deploy.engines import ort_build
    from rap_deploy.engines.build import build_engine
    from rap_deploy.errors import CheckFailedError
    from rap_deploy.folder_swap import swap_into_place

    src, staged, out = tmp_path / "export", tmp_path / ".export.partial-1", tmp_path / "engine"
    shutil.copytree(micro_ort_engines["export"], src)
    shutil.copytree(micro_ort_engines["export"], staged)
    build_graphs = ort_build.build_ort_graphs

    def swap_then_build(*args, **kwargs):
        swap_into_place(staged, src)  # the export commits its new folder as the build starts reading graphs
        return build_graphs(*args, **kwargs)

    monkeypatch.setattr(ort_build, "build_ort_graphs", swap_then_build)
    with pytest.raises(CheckFailedError, match="was replaced while the engine was built"):
        build_engine(src, backend="onnxruntime", out=out, validate=False, progress=False)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["export"]


def test_a_lazy_engine_refuses_a_folder_swapped_after_its_load(micro_ort_engines, tmp_path):
    """`rapdeploy search` loads its engine lazily (a graph's session on its first call): a `build-engine --force`
    swapping a new folder in after the load made that first call open the new folder's graph under the old manifest,
    never checked (reproduced: a swap between load and first call, the new folder's video encoder not its manifest's:
    it ran). The session is now refused, one line naming the folder (exit 1)."""
    import shutil

    import numpy as np

    from rap_deploy.engines.loader import load_engine
    from rap_deploy.engines.manifest import read_manifest
    from rap_deploy.errors import CheckFailedError
    from rap_deploy.folder_swap import swap_into_place

    dest, staged = tmp_path / "engine", tmp_path / ".engine.partial-1"
    shutil.copytree(micro_ort_engines["fp32"], dest)
    shutil.copytree(micro_ort_engines["fp32"], staged)
    graph = read_manifest(staged)["graphs"]["video_encoder"]["file"]
    shutil.copyfile(damaged_graph := micro_ort_engines["damaged"] / graph, staged / graph)
    assert damaged_graph.read_bytes() != (dest / graph).read_bytes()
    engine = load_engine(dest, lazy=True)
    try:
        swap_into_place(staged, dest)
        size = engine.config.preprocess.image_size
        frames = np.zeros((1, engine.config.frames, 3, size, size), dtype=np.float32)
        with pytest.raises(CheckFailedError, match="was replaced since this process loaded it"):
            engine.encode_video(frames)
    finally:
        engine.close()


def test_a_folder_swapped_during_every_load_is_refused_after_the_retries(tmp_path):
    """A load that a concurrent writer straddles is done again; a folder swapped during every one of them is refused
    with the message the other swap refusals give (folder_swap.folder_replaced), each engine loaded closed."""
    import re

    from rap_deploy.engines.loader import SWAP_RETRIES, load_unswapped
    from rap_deploy.errors import CheckFailedError

    folder, loaded = tmp_path / "engine", []
    folder.mkdir()

    class Loaded:
        closed = False

        def close(self) -> None:
            self.closed = True

    def swapping_load() -> Loaded:
        (tmp_path / f"new{len(loaded)}").mkdir()
        folder.rename(tmp_path / f"old{len(loaded)}")  # kept: its inode is not reused by the next folder
        (tmp_path / f"new{len(loaded)}").rename(folder)
        loaded.append(Loaded())
        return loaded[-1]

    said = f"{re.escape(str(folder))} was replaced while it was being loaded, {SWAP_RETRIES} times .*export --force"
    with pytest.raises(CheckFailedError, match=said):
        load_unswapped(folder, swapping_load)
    assert len(loaded) == SWAP_RETRIES and all(e.closed for e in loaded)


def _deny_writing(monkeypatch, lock_file):
    """Make the file now at ``lock_file`` another user's, as this (root) test process cannot: opening it for writing
    is refused (a new file created there is this user's)."""
    import os

    real_open, theirs = os.open, lock_file.stat().st_ino

    def fake_open(path, flags, *args, **kwargs):
        denied = os.fspath(path) == str(lock_file) and lock_file.exists() and lock_file.stat().st_ino == theirs
        if denied and flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)


def test_another_users_lock_file_is_busy_or_replaced_not_a_permission_error(tmp_path, monkeypatch):
    """In a shared workspace the lock file may be another user's (0644): it was opened for writing, so a second user
    got 'cannot create .out.lock (Permission denied)' whether its owner was writing or long dead (killed: the file
    stays). It is now locked read-only: held, the holder is named; stale, it is replaced by this user's."""
    from conftest import held_folder_lock

    from rap_deploy.locks import lock_path

    target = tmp_path / "out"
    lock_file = lock_path(target)
    with held_folder_lock(target, "export") as pid, monkeypatch.context() as patch:
        _deny_writing(patch, lock_file)
        with pytest.raises(FolderBusyError, match=f"process {pid} .*rapdeploy export"):
            with folder_lock(target, "build-engine"):
                pass
    lock_file.write_text('{"pid": 1, "command": "export"}')  # left behind by a killed owner
    _deny_writing(monkeypatch, lock_file)
    with folder_lock(target, "build-engine"):
        assert "build-engine" in lock_file.read_text()
    assert not lock_file.exists()


def test_a_filesystem_without_locks_is_one_line(tmp_path, monkeypatch):
    """flock failing for another reason than a holder (ENOLCK, EOPNOTSUPP: some network and FUSE filesystems)
    escaped as a bare OSError without a path; it is a usage error naming the lock file and what to do."""
    import errno
    import fcntl

    from rap_deploy.errors import UsageError

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(UsageError, match=r"cannot lock .*\.out\.lock.*No locks available.*does not support") as info:
        with folder_lock(tmp_path / "out", "export"):
            pass
    assert not isinstance(info.value, FolderBusyError)


def test_an_engine_swapped_while_triton_repo_copies_it_is_refused(micro_ort_engines, tmp_path, monkeypatch):
    """`build-engine --force` swapping a new engine in while `triton-repo` copies the old one: the repository got
    files of the new folder, never hash-checked, under the old manifest's description (reproduced: a swap as the
    first model is written; the repository was committed). It is now refused before the commit (exit 1)."""
    import shutil

    from rap_deploy.engines.serving import triton_repo as module
    from rap_deploy.errors import CheckFailedError
    from rap_deploy.folder_swap import swap_into_place

    engine, staged, out = tmp_path / "engine", tmp_path / ".engine.partial-1", tmp_path / "repo"
    shutil.copytree(micro_ort_engines["fp32"], engine)
    shutil.copytree(micro_ort_engines["damaged"], staged)
    write_model = module.write_model

    def swap_then_write(plan, model, folder):
        if staged.exists():
            swap_into_place(staged, engine)
        return write_model(plan, model, folder)

    monkeypatch.setattr(module, "write_model", swap_then_write)
    with pytest.raises(CheckFailedError, match="was replaced while the model repository was copied"):
        module.triton_repo(engine, out=out)
    assert not out.exists()


def test_the_demo_training_step_takes_the_run_folder_lock(tmp_path, monkeypatch):
    """`rapdeploy demo` trained its run folder without the lock `rapdeploy train` takes on it, so a `train --resume`
    of the demo's run (or a demo beside it) wrote the same last.pt/metrics.jsonl at once, and the demo could even
    delete the folder under it (a finished run redone). The demo's training step now takes that lock: busy, it
    stops naming the holder (exit 2) before touching the folder."""
    from types import SimpleNamespace

    from conftest import held_folder_lock

    from rap_deploy.cli import pipeline
    from rap_deploy.cli.demo_steps import Steps
    from rap_deploy.train import loop

    run_dir = tmp_path / "runs" / "rap"
    run_dir.mkdir(parents=True)
    trained: list[object] = []
    monkeypatch.setattr(loop, "train_rap", lambda *a, **k: trained.append(a))
    monkeypatch.setattr(pipeline, "train_options", lambda *a, **k: None)
    monkeypatch.setattr(pipeline, "check_demo_training", lambda *a, **k: None)
    (tmp_path / "init.pt").write_bytes(b"x")
    (tmp_path / "MSRVTT_data.json").write_text("{}")
    run = SimpleNamespace(run_dir=run_dir, sizes=None, world=SimpleNamespace(data=tmp_path, frame_cache=tmp_path),
                          init_ckpt=tmp_path / "init.pt", out=tmp_path, log=lambda m: None, progress=False,
                          steps=Steps(lambda m: None, None), rap_file=tmp_path / "r.json",
                          zero_shot_file=tmp_path / "z.json")
    with held_folder_lock(run_dir, "train", "run folder") as pid:
        with pytest.raises(FolderBusyError, match=f"process {pid} .*rapdeploy train"):
            pipeline._train_and_results_steps(run)
    assert trained == []


def test_the_frame_cache_still_stores_where_the_filesystem_has_no_locks(tmp_path, monkeypatch):
    """The lock a frame cache writer holds on its temporary file (so a sweep never takes it for a killed writer's)
    made every store fail where flock does not work (ENOLCK on some network filesystems): it is best-effort."""
    import errno
    import fcntl

    from rap_deploy.config import FrameSamplingConfig, PreprocessConfig
    from rap_deploy.data.cache import FrameCache

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    video, root = _tiny_video(tmp_path / "clip.mp4"), tmp_path / "cache"
    cache = FrameCache(root)
    cache.get(video, FrameSamplingConfig(max_frames=4), PreprocessConfig(image_size=16))
    assert cache.get(video, FrameSamplingConfig(max_frames=4), PreprocessConfig(image_size=16)) is not None
    assert (cache.misses, cache.hits) == (1, 1) and len(list(root.rglob("*.npz"))) == 1


def test_a_forked_child_does_not_keep_its_killed_parents_lock(tmp_path):
    """A process forked while a lock is held (train's DataLoader workers) inherited the lock's descriptor, so when
    the parent was SIGKILL-ed (the OOM killer) a child still running kept the folder locked in the dead parent's
    name (reproduced: parent killed, child alive, the next writer got FolderBusyError). A child now closes its
    copies at the fork; the parent's lock itself is untouched while it lives."""
    import os
    import signal
    import subprocess
    import sys

    target = tmp_path / "run"
    code = ("import os, sys\nfrom rap_deploy.locks import folder_lock\n"
            f"with folder_lock({str(target)!r}, 'train', 'run folder'):\n"
            "    child = os.fork()\n"
            "    if child == 0:\n"
            "        os.write(1, b'forked\\n'); sys.stdin.read(); os._exit(0)\n"
            "    os.write(1, b'%d\\n' % child); sys.stdin.readline()\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    # the child's line says its fork handlers have run (on a loaded machine it may not have run at all yet when
    # the parent is killed, and then still holds the lock); the parent's line is the child's pid (each line one
    # write, so the two never interleave)
    lines = {parent.stdout.readline().strip(), parent.stdout.readline().strip()}
    child = int((lines - {"forked"}).pop())
    try:
        with pytest.raises(FolderBusyError, match=f"process {parent.pid} "):  # the living parent holds it
            with folder_lock(target, "train"):
                pass
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=60)
        with folder_lock(target, "train"):  # the child lives on, without the lock
            os.kill(child, 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        parent.stdin.close()
        parent.stdout.close()


def test_pretrain_backbone_rechecks_its_out_under_the_lock(tmp_path, monkeypatch):
    """pretrain-backbone checked that --out did not exist before taking its lock only, so a run that finished the
    same file meanwhile (the lock released just as this one took it) was overwritten without --force, and the
    checkpoints made on it refused it after (reproduced: the file written as the lock is taken). It is checked again
    under the lock."""
    from typer.testing import CliRunner

    from rap_deploy.cli import backbone_cmds
    from rap_deploy.cli.app import app
    from rap_deploy.train import backbone

    out = tmp_path / "backbone.safetensors"
    real_lock, trained = backbone_cmds.folder_lock, []

    def finished_meanwhile(target, *args, **kwargs):
        out.write_bytes(b"the other run's backbone")
        return real_lock(target, *args, **kwargs)

    monkeypatch.setattr(backbone_cmds, "folder_lock", finished_meanwhile)
    monkeypatch.setattr(backbone, "pretrain_backbone", lambda *a, **k: trained.append(a) or {})
    res = CliRunner().invoke(app, ["pretrain-backbone", "--out", str(out), "--quiet"])
    assert res.exit_code == 2 and "exists; pass --force" in res.output, res.output
    assert trained == [] and out.read_bytes() == b"the other run's backbone"


def test_another_users_unreadable_lock_file_is_named_not_taken_for_an_unwritable_folder(tmp_path, monkeypatch):
    """A lock file another user made under umask 077 (0600) can be neither written nor read: the message said the
    folder was not writable ('cannot create .out.lock (Permission denied); pass a writable --out'), though the
    folder is; it now names the file's owner and what to do (it is never deleted: its owner may be writing)."""
    import os

    from rap_deploy.errors import UsageError
    from rap_deploy.locks import lock_path

    target = tmp_path / "out"
    lock_file = lock_path(target)
    lock_file.write_text("")
    real_open = os.open

    def fake_open(path, flags, *args, **kwargs):
        if os.fspath(path) == str(lock_file):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    with pytest.raises(UsageError, match=f"belongs to user {os.getuid()} and this user may not read it"):
        with folder_lock(target, "export"):
            pass
    assert lock_file.exists()


@pytest.mark.parametrize("kind", ["verify", "bench"])
def test_a_killed_report_writers_temporary_is_removed_by_the_next_report(kind, tmp_path, monkeypatch):
    """A verify SIGKILL-ed while writing verify.json left its hidden ``.verify.json.*.tmp`` in the report folder for
    ever (no later verify removed it). The next write of that folder's reports now deletes it, under the folder's
    lock (which says its writer is dead): never while a live writer holds that lock, never another file's."""
    import json
    import os
    import subprocess
    import sys

    from conftest import held_folder_lock

    from rap_deploy.atomic import write_bytes_atomic
    from rap_deploy.engines import bench, bench_format, reports, verify

    out = tmp_path / "report"
    code = ("import sys; from pathlib import Path; from rap_deploy.atomic import write_json_atomic\n"
            "from rap_deploy.locks import folder_lock\n"
            "with folder_lock(sys.argv[1], sys.argv[2], 'report folder'):\n"
            "    write_json_atomic(Path(sys.argv[1]) / (sys.argv[2] + '.json'), {})")
    killed = subprocess.run([sys.executable, "-c", code, str(out), kind], timeout=120,
                            env={**os.environ, "RAPDEPLOY_CRASH_AT": "atomic.tmp-created"})
    assert killed.returncode == -9
    (temp,) = out.glob(f".{kind}.json.*.tmp")
    others = [out / f".{kind}.json.bak.k3b_c3hn.bak.tmp", out / ".notes.tmp"]  # not a report's temporary
    for path in others:
        path.write_text("mine")
    formats = reports if kind == "verify" else bench_format
    monkeypatch.setattr(formats, f"{kind}_markdown", lambda result: "# report\n")
    monkeypatch.setattr(formats, f"plot_{kind}", lambda result, path: write_bytes_atomic(path, b"png"))
    write = verify.write_verify_reports if kind == "verify" else bench.write_bench_reports
    with held_folder_lock(out, kind, "report folder"), pytest.raises(FolderBusyError):
        write(out, {"passed": True})  # a live writer's: left alone
    assert temp.exists()
    write(out, {"passed": True})
    assert not temp.exists() and all(path.read_text() == "mine" for path in others)
    assert json.loads((out / f"{kind}.json").read_text()) == {"passed": True}


def test_two_runs_started_in_one_second_choose_two_run_folders(tmp_path):
    """Two `rapdeploy train` without --out started in the same second chose one folder, runs/<dataset>-<time>, and the
    second failed with FolderBusyError. The default name gets -2, -3... when that folder exists or is locked, and the
    name chosen is held locked from then on, so no third run takes it."""
    import subprocess
    import sys
    import time

    from conftest import held_folder_lock

    from rap_deploy.cli.train_cmds import default_run_dir
    from rap_deploy.errors import UsageError

    runs, now = tmp_path / "runs", 1_800_000_000.0
    base = runs / f"msrvtt-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"
    with contextlib.ExitStack() as claim:
        assert default_run_dir(runs, "msrvtt", claim, now) == base
    with held_folder_lock(base, "train", "run folder"), contextlib.ExitStack() as claim:  # the first run trains
        second = default_run_dir(runs, "msrvtt", claim, now)
        assert second == base.with_name(base.name + "-2")
        code = ("import sys; from rap_deploy.locks import folder_lock, FolderBusyError\n"
                "try:\n    with folder_lock(sys.argv[1], 'train'): pass\nexcept FolderBusyError: sys.exit(3)")
        assert subprocess.run([sys.executable, "-c", code, str(second)], timeout=60).returncode == 3
    base.mkdir()  # the first run's finished folder
    second.mkdir()
    with contextlib.ExitStack() as claim:
        assert default_run_dir(runs, "msrvtt", claim, now) == base.with_name(base.name + "-3")
    with pytest.raises(UsageError, match="unknown"), contextlib.ExitStack() as claim:
        default_run_dir(runs, "../escaped", claim, now)


def test_train_without_out_takes_the_next_name_when_a_run_of_the_same_second_holds_it(tmp_path, monkeypatch):
    """The CLI path: a run of the same second holds runs/msrvtt-<time>; train without --out trains into
    msrvtt-<time>-2, whose lock it holds while it trains (the training itself is replaced here)."""
    import time
    import types

    from conftest import held_folder_lock
    from typer.testing import CliRunner

    from rap_deploy.cli import train_cmds
    from rap_deploy.cli.app import app
    from rap_deploy.locks import lock_path

    now = time.localtime(1_800_000_000.0)
    monkeypatch.setattr(train_cmds, "time", types.SimpleNamespace(strftime=time.strftime, localtime=lambda _t: now))
    trained = []

    def fake_training(options, *_args):
        trained.append((options.out, lock_path(options.out).is_file()))
        return {}

    monkeypatch.setattr(train_cmds, "_run_training", fake_training)
    (tmp_path / "data").mkdir()
    base = tmp_path / "ws" / "runs" / f"msrvtt-{time.strftime('%Y%m%d-%H%M%S', now)}"
    with held_folder_lock(base, "train", "run folder"):
        res = CliRunner().invoke(app, ["train", "--dataset", "msrvtt", "--data-root", str(tmp_path / "data"),
                                       "--workspace", str(tmp_path / "ws"), "--json"])
    assert res.exit_code == 0, res.output
    assert trained == [(str(base) + "-2", True)]
    assert not lock_path(str(base) + "-2").exists()  # released when the run ended


def test_train_under_torchrun_without_out_is_refused(tmp_path, monkeypatch):
    """Each torchrun process chose the default run folder from its own clock (and rank 0 alone skips names that are
    taken), so the processes could name different folders; a new run under torchrun needs --out (exit 2)."""
    from typer.testing import CliRunner

    from rap_deploy.cli import train_cmds
    from rap_deploy.cli.app import app

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(train_cmds, "_run_training", lambda *_a: pytest.fail("trained without --out"))
    (tmp_path / "data").mkdir()
    res = CliRunner().invoke(app, ["train", "--dataset", "msrvtt", "--data-root", str(tmp_path / "data"),
                                   "--workspace", str(tmp_path / "ws")])
    assert res.exit_code == 2, res.output
    assert "under torchrun pass --out" in res.output
    assert not (tmp_path / "ws" / "runs").exists()


@pytest.mark.parametrize("when", ["between its check and its read", "after the listing", "the folder itself"])
def test_latest_child_skips_a_manifest_deleted_while_it_looks(tmp_path, monkeypatch, when):
    """latest_child checked that each sub-folder's manifest was a file, then read its mtime: a manifest deleted in
    between (an export or build-engine --force swapping that folder, a cleanup) ended the command in a
    FileNotFoundError traceback (reproduced by deleting it at the check). Such a child is skipped now."""
    import os
    import shutil
    from pathlib import Path

    from rap_deploy.workspace import latest_child

    engines = tmp_path / "engines"
    for name, stamp in (("old", 1), ("new", 2)):
        (engines / name).mkdir(parents=True)
        (engines / name / "manifest.json").write_text("{}")
        os.utime(engines / name / "manifest.json", (stamp, stamp))
    gone = engines / "new" / "manifest.json"
    real_stat, real_iterdir = Path.stat, Path.iterdir

    def stat_then_delete(self, *args, **kwargs):  # the file is there at the first look, gone just after
        result = real_stat(self, *args, **kwargs)
        if self == gone:
            gone.unlink()
        return result

    def list_then_delete(self):
        children = list(real_iterdir(self))
        shutil.rmtree(engines / "new")
        return iter(children)

    def folder_gone(self):
        raise FileNotFoundError(2, "No such file or directory", str(self))

    patch = {"between its check and its read": ("stat", stat_then_delete), "after the listing":
             ("iterdir", list_then_delete), "the folder itself": ("iterdir", folder_gone)}[when]
    monkeypatch.setattr(Path, *patch)
    found = latest_child(engines, "manifest.json")
    if when == "the folder itself":
        assert found is None
    elif when == "after the listing":
        assert found == engines / "old"
    else:  # read before it went: no traceback, and the mtime it had
        assert found in (engines / "new", engines / "old") and not gone.exists()
