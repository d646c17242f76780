"""Dataset readers on fixture folders in each CLIP4Clip format, and the training dataset."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from rap_deploy.config import FrameSamplingConfig, PreprocessConfig
from rap_deploy.data.cache import FrameCache
from rap_deploy.data.datasets import DATASETS, VideoCaptionDataset, VideoDataset, dataset_defaults, load_split
from rap_deploy.data.synth_dataset import write_video
from rap_deploy.errors import CheckFailedError, UsageError


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _msrvtt(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\n"
        "ret0,msr7010,video7010,a man is talking\n"
        "ret1,msr7011,video7011,a dog runs\n"
        "ret2,msr7012,video7012,people dance on a stage\n"
    )
    (root / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo1\n")
    sentences = [
        {"caption": "a cat sleeps", "video_id": "video0", "sen_id": 0},
        {"caption": "a cat is sleeping", "video_id": "video0", "sen_id": 1},
        {"caption": "a car drives", "video_id": "video1", "sen_id": 2},
        {"caption": "not in train", "video_id": "video9", "sen_id": 3},
    ]
    videos = [{"video_id": f"video{i}", "split": "train"} for i in (0, 1, 9)]
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))
    _touch(root / "videos" / "video0.mp4")
    _touch(root / "videos" / "video7011.webm")
    return root


def test_msrvtt_test_and_train(tmp_path):
    root = _msrvtt(tmp_path / "msrvtt")
    test = load_split("msrvtt", root)
    assert [v.video_id for v in test.videos] == ["video7010", "video7011", "video7012"]
    assert test.captions == ["a man is talking", "a dog runs", "people dance on a stage"]
    assert test.caption_video.tolist() == [0, 1, 2] and not test.multi_caption
    assert test.videos[0].path == root / "videos" / "video7010.mp4"  # listed even though it does not exist
    assert test.videos[1].path.name == "video7011.webm"  # CLIP4Clip's .webm fallback
    _touch(root / "videos" / "all" / "video7012.mp4")  # the unzipped MSRVTT.zip's layout
    assert load_split("msrvtt", root).videos[2].path == root / "videos" / "all" / "video7012.mp4"
    assert test.sampling == FrameSamplingConfig(max_frames=12) and test.context_length == 32
    assert load_split("msrvtt", root, "val").captions == test.captions  # CLIP4Clip validates on test

    train = load_split("msrvtt", root, "train", max_frames=8)
    assert [v.video_id for v in train.videos] == ["video0", "video1"]
    assert train.captions == ["a cat sleeps", "a cat is sleeping", "a car drives"]
    assert train.caption_video.tolist() == [0, 0, 1]
    assert train.video_captions() == [[0, 1], [2]]
    assert train.captions_of(0) == ["a cat sleeps", "a cat is sleeping"]
    assert train.multi_caption and train.sampling.max_frames == 8
    sub = train.subset([1])
    assert sub.captions == ["a car drives"] and sub.caption_video.tolist() == [0]


def test_msrvtt_videos_in_the_official_release_folders_are_found(tmp_path):
    """MSR-VTT's own release unpacks to TrainValVideo/ and TestVideo/: videos there were reported missing (only
    videos/ and videos/all/ were looked in), where the other datasets' videos are found in any sub-folder."""
    root = _msrvtt(tmp_path / "msrvtt")
    found = _touch(root / "videos" / "TrainValVideo" / "video7010.mp4")
    assert load_split("msrvtt", root).videos[0].path == found
    assert load_split("msrvtt", root).videos[1].path == root / "videos" / "video7011.webm"  # direct files first
    assert load_split("msrvtt", root).videos[2].path == root / "videos" / "video7012.mp4"  # missing: where expected


def test_msrvtt_bad_annotations_name_file_and_key(tmp_path):
    root = _msrvtt(tmp_path / "m")
    data = json.loads((root / "MSRVTT_data.json").read_text())
    del data["sentences"][1]["caption"]
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    with pytest.raises(CheckFailedError, match=r"MSRVTT_data\.json has no key 'caption' in sentences\[1\]"):
        load_split("msrvtt", root, "train")
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,video_id\nret0,video1\n")
    with pytest.raises(CheckFailedError, match=r"MSRVTT_JSFUSION_test\.csv has no column 'sentence'"):
        load_split("msrvtt", root, "test")
    (root / "MSRVTT_train.9k.csv").unlink()
    with pytest.raises(UsageError, match=r"MSRVTT_train\.9k\.csv is missing"):
        load_split("msrvtt", root, "train")
    with pytest.raises(UsageError, match="no split 'dev'"):
        load_split("msrvtt", root, "dev")
    with pytest.raises(UsageError, match="unknown"):
        load_split("kinetics", root)
    with pytest.raises(UsageError, match="does not exist"):
        load_split("msrvtt", tmp_path / "nowhere")


def test_msvd_every_caption_is_a_query(tmp_path):
    root = tmp_path / "msvd"
    root.mkdir()
    (root / "train_list.txt").write_text("vidA\n")
    (root / "val_list.txt").write_text("vidB\n")
    (root / "test_list.txt").write_text("vidB\nvidC\n")
    captions = {
        "vidA": [["a", "man", "cooks"]],
        "vidB": [["a", "dog", "barks"], ["the", "dog", "is", "barking"]],
        "vidC": [["a", "girl", "sings"], ["someone", "sings"], ["a", "song"]],
    }
    (root / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    _touch(root / "videos" / "vidB.avi")
    _touch(root / "videos" / "sub" / "vidC.mp4")
    split = load_split("msvd", root, "test")
    assert [v.video_id for v in split.videos] == ["vidB", "vidC"]
    assert split.captions == ["a dog barks", "the dog is barking", "a girl sings", "someone sings", "a song"]
    assert split.caption_video.tolist() == [0, 0, 1, 1, 1]
    assert split.multi_caption
    assert split.videos[0].path == root / "videos" / "vidB.avi"
    assert split.videos[1].path == root / "videos" / "sub" / "vidC.mp4"
    assert load_split("msvd", root, "train").videos[0].path == root / "videos" / "vidA.avi"  # missing, listed

    (root / "test_list.txt").write_text("vidB\nvidZ\n")
    with pytest.raises(CheckFailedError, match=r"raw-captions\.pkl has no key 'vidZ'"):
        load_split("msvd", root, "test")


def test_msvd_refuses_pickled_code(tmp_path):
    root = tmp_path / "msvd"
    root.mkdir()
    (root / "test_list.txt").write_text("x\n")
    (root / "raw-captions.pkl").write_bytes(pickle.dumps({"x": [np.int64(3)]}))
    with pytest.raises(CheckFailedError, match="plain pickle"):
        load_split("msvd", root, "test")
    from collections import OrderedDict, defaultdict

    for mapping in (OrderedDict, lambda: defaultdict(list)):  # what a captions dict is often saved as
        captions = mapping()
        captions["x"] = [["a", "cat"]]
        (root / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
        assert load_split("msvd", root, "test").captions == ["a cat"]
    (root / "raw-captions.pkl").write_bytes(pickle.dumps(defaultdict(dict, {"x": [["a"]]})))  # dict: not allowed
    with pytest.raises(CheckFailedError, match="refusing to load builtins.dict"):
        load_split("msvd", root, "test")


def test_msvd_captions_are_text_or_flat_word_lists(tmp_path):
    """A caption that nests lists (shared references grow exponentially when flattened: 210 bytes of pickle could
    become gigabytes) or nests deeper than the parser recurses is a damaged file, not a traceback."""
    root = tmp_path / "msvd"
    root.mkdir()
    (root / "test_list.txt").write_text("x\n")
    shared = ["w"]
    for _ in range(25):
        shared = [shared, shared]
    (root / "raw-captions.pkl").write_bytes(pickle.dumps({"x": [shared]}))
    with pytest.raises(CheckFailedError, match="neither text nor a list of words"):
        load_split("msvd", root, "test")
    words = ["w" * 99] * 10_000  # pickled once, 1 MB of text each time a caption refers to it
    (root / "raw-captions.pkl").write_bytes(pickle.dumps({"x": [words] * 25}))
    with pytest.raises(CheckFailedError, match="more than 20,000,000 characters"):
        load_split("msvd", root, "test")


def test_didemo_paragraphs_and_extensions(tmp_path):
    root = tmp_path / "didemo"
    root.mkdir()
    (root / "test_list.txt").write_text("111@N00_1.mov\n222@N00_2\n")
    annotations = [
        {"video": "111@N00_1.mov", "description": "a man enters", "times": [[0, 0]]},
        {"video": "999@N00_9.mp4", "description": "not in the list", "times": [[1, 1]]},
        {"video": "111@N00_1.mov", "description": "he sits down", "times": [[2, 3]]},
        {"video": "222@N00_2", "description": "a bird flies", "times": [[0, 1]]},
    ]
    (root / "test_data.json").write_text(json.dumps(annotations))
    _touch(root / "videos" / "111@N00_1.mp4")  # re-encoded copy: same stem, other extension
    _touch(root / "videos" / "222@N00_2.m4v")
    split = load_split("didemo", root, "test")
    assert split.captions == ["a man enters he sits down", "a bird flies"]
    assert split.caption_video.tolist() == [0, 1]
    assert split.videos[0].path.name == "111@N00_1.mp4" and split.videos[1].path.name == "222@N00_2.m4v"
    assert split.videos[0].end == 31.0 and split.videos[0].start is None
    assert split.sampling.max_frames == 64 and split.context_length == 64
    (root / "test_list.txt").write_text("111@N00_1.mov\n222@N00_2\n333@N00_3.mts\n")
    annotations.append({"video": "333@N00_3.mts", "description": "a car parks", "times": [[0, 1]]})
    (root / "test_data.json").write_text(json.dumps(annotations))
    _touch(root / "videos" / "333@N00_3.mts")  # Flickr's own extension, kept: the listed name is the file
    assert load_split("didemo", root, "test").videos[2].path == root / "videos" / "333@N00_3.mts"

    annotations[2].pop("description")
    (root / "test_data.json").write_text(json.dumps(annotations))
    with pytest.raises(CheckFailedError, match=r"test_data\.json has no key 'description' in \[2\]"):
        load_split("didemo", root, "test")


def test_didemo_camcorder_files_in_a_sub_folder_or_re_encoded_are_found(tmp_path):
    """A listed Flickr name with a camcorder extension was reported missing when its file sat in a sub-folder of
    videos/ (CLIP4Clip walks the folder for the listed name; the finder indexed known video extensions only) or
    had been re-encoded to .mp4 (.mts/.MTS was not a known extension, so it was not stripped)."""
    root = tmp_path / "didemo"
    root.mkdir()
    (root / "test_list.txt").write_text("111@N00_1.mts\n222@N00_2.MTS\n")
    annotations = [{"video": "111@N00_1.mts", "description": "a man enters", "times": [[0, 0]]},
                   {"video": "222@N00_2.MTS", "description": "a bird flies", "times": [[0, 1]]}]
    (root / "test_data.json").write_text(json.dumps(annotations))
    kept = _touch(root / "videos" / "test" / "111@N00_1.mts")
    re_encoded = _touch(root / "videos" / "test" / "222@N00_2.mp4")
    assert [v.path for v in load_split("didemo", root, "test").videos] == [kept, re_encoded]


def test_activitynet_val_paragraphs(tmp_path):
    root = tmp_path / "anet"
    root.mkdir()
    (root / "val_ids.json").write_text(json.dumps(["v_abc", "v_def"]))
    (root / "train_ids.json").write_text(json.dumps(["v_tr1"]))
    val = {
        "v_abc": {"duration": 40.3, "timestamps": [[0, 10], [10, 40]], "sentences": ["A man runs.", " He jumps."]},
        "v_def": {"duration": 12.0, "timestamps": [[0, 12]], "sentences": ["A cat."]},
    }
    (root / "val_1.json").write_text(json.dumps(val))
    (root / "train.json").write_text(json.dumps({"v_tr1": {"duration": 5, "timestamps": [], "sentences": ["x"]}}))
    _touch(root / "videos" / "abc.mp4")  # CLIP4Clip names files without "v_"
    _touch(root / "videos" / "v_def.mkv")
    split = load_split("activitynet", root, "test")  # test = val_1
    assert split.split == "test"
    assert [v.video_id for v in split.videos] == ["v_abc", "v_def"]
    assert split.captions == ["A man runs. He jumps.", "A cat."]
    assert split.videos[0].path.name == "abc.mp4" and split.videos[1].path.name == "v_def.mkv"
    assert split.videos[0].end == 41.0
    assert load_split("activitynet", root, "train").captions == ["x"]
    (root / "train.json").write_text(json.dumps({"v_tr1": {"duration": 0, "timestamps": [], "sentences": ["x"]}}))
    assert load_split("activitynet", root, "train").videos[0].end is None  # was 0.0: the first frame only

    del val["v_def"]["sentences"]
    (root / "val_1.json").write_text(json.dumps(val))
    with pytest.raises(CheckFailedError, match=r"val_1\.json has no key 'sentences' in v_def"):
        load_split("activitynet", root, "val")

    # a sentence that is not text was made a caption by str(): "['A cat.'] {'text': 'x'}"
    val["v_def"]["sentences"] = [["A cat."], {"text": "x"}]
    (root / "val_1.json").write_text(json.dumps(val))
    with pytest.raises(CheckFailedError, match=r"val_1\.json has a sentence of type list .* in v_def"):
        load_split("activitynet", root, "val")


def test_dataset_defaults():
    assert DATASETS == ("msrvtt", "msvd", "didemo", "activitynet")
    assert dataset_defaults("msrvtt") == (FrameSamplingConfig(max_frames=12, fps=1.0), 32)
    assert dataset_defaults("msvd")[1] == 32
    assert dataset_defaults("didemo") == (FrameSamplingConfig(max_frames=64, fps=1.0), 64)
    assert dataset_defaults("activitynet")[0].max_frames == 64
    with pytest.raises(UsageError):
        dataset_defaults("lsmdc")


def test_video_caption_dataset_skips_and_counts_bad_videos(tmp_path):
    root = _msrvtt(tmp_path / "m")
    rng = np.random.default_rng(0)
    write_video(root / "videos" / "video0.mp4", rng.integers(0, 255, (12, 24, 32, 3), dtype=np.uint8), 4)
    (root / "videos" / "video1.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))  # corrupt
    split = load_split("msrvtt", root, "train", max_frames=4)
    pre = PreprocessConfig(image_size=16)
    ds = VideoCaptionDataset(split, FrameCache(tmp_path / "cache"), pre).prepare()
    assert [b["video_id"] for b in ds.bad_videos] == ["video1"]
    assert ds.bad_videos[0]["reason"].startswith("cannot decode")
    assert len(ds) == 2  # the two captions of video0; video1's caption dropped
    item = ds[1]
    assert item["frames"].shape == (4, 3, 16, 16) and item["frames"].dtype == torch.float32
    assert item["frame_mask"].tolist() == [1.0, 1.0, 1.0, 0.0]  # 3 s video
    assert item["ids"].shape == (32,) and item["ids"].dtype == torch.int32
    assert item["eot"].dtype == torch.int32 and item["eot"].ndim == 0
    assert int(item["ids"][item["eot"]]) == int(item["ids"].max())  # EOT has the largest id in open_clip's vocab
    assert (item["video_index"], item["caption_index"]) == (0, 1)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["frames"].shape == (2, 4, 3, 16, 16) and batch["eot"].shape == (2,)

    videos = VideoDataset(split.subset([0]), FrameCache(tmp_path / "cache"), pre)
    assert len(videos) == 1 and videos[0]["frames"].shape == (4, 3, 16, 16)


def test_annotation_files_saved_with_a_byte_order_mark_read_as_without(tmp_path):
    """Editors and spreadsheets on Windows save UTF-8 with a byte order mark; pandas (CLIP4Clip's reader) skips it,
    so the CSV, JSON and list files read the same with one as without."""
    root = _msrvtt(tmp_path / "msrvtt")
    for name in ("MSRVTT_train.9k.csv", "MSRVTT_data.json", "MSRVTT_JSFUSION_test.csv"):
        path = root / name
        path.write_text("\ufeff" + path.read_text(encoding="utf-8"), encoding="utf-8")
    assert [v.video_id for v in load_split("msrvtt", root, "train").videos] == ["video0", "video1"]
    assert load_split("msrvtt", root, "test").captions[0] == "a man is talking"
    msvd = tmp_path / "msvd"
    msvd.mkdir()
    (msvd / "test_list.txt").write_text("\ufeffvidB\nvidC\n", encoding="utf-8")
    (msvd / "raw-captions.pkl").write_bytes(pickle.dumps({"vidB": [["a", "dog"]], "vidC": [["a", "cat"]]}))
    assert [v.video_id for v in load_split("msvd", msvd, "test").videos] == ["vidB", "vidC"]


def test_videos_in_a_symlinked_sub_folder_are_found(tmp_path):
    """Large datasets keep their videos on other disks behind folder links (videos/train -> /disk2/anet/train):
    os.walk does not enter a linked folder, so every video in one was 'missing'. Linked folders are searched, a
    link loop once."""
    root = tmp_path / "msvd"
    (root / "videos").mkdir(parents=True)
    (root / "test_list.txt").write_text("vidA\nvidB\nvidC\n")
    captions = {"vidA": [["a", "cow"]], "vidB": [["a", "dog"]], "vidC": [["a", "cat"]]}
    (root / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    _touch(root / "videos" / "vidA.avi")
    elsewhere = tmp_path / "disk2" / "clips"
    _touch(elsewhere / "vidB.avi")
    _touch(elsewhere / "deeper" / "vidC.avi")
    (root / "videos" / "clips").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "deeper" / "loop").symlink_to(root / "videos", target_is_directory=True)
    split = load_split("msvd", root, "test")
    assert [v.path for v in split.videos] == [root / "videos" / "vidA.avi", root / "videos" / "clips" / "vidB.avi",
                                              root / "videos" / "clips" / "deeper" / "vidC.avi"]


def test_videos_in_the_folder_clip4clip_s_readme_names_are_found(tmp_path):
    """CLIP4Clip's README trains from --features_path ${DATA_PATH}/MSRVTT_Videos (MSVD_Videos, DiDeMo_Videos,
    Activity_Videos): a folder laid out that way had every video reported missing, as only videos/ was read. That
    folder is read when there is no videos/; videos/ still comes first."""
    from rap_deploy.data.check import check_dataset

    root = _msrvtt(tmp_path / "msrvtt")
    (root / "videos").rename(root / "MSRVTT_Videos")
    split = load_split("msrvtt", root)
    assert split.videos[1].path == root / "MSRVTT_Videos" / "video7011.webm"
    assert split.videos[0].path == root / "MSRVTT_Videos" / "video7010.mp4"  # missing: where it is looked for
    report = check_dataset("msrvtt", root, "test", progress=False)
    assert report["videos_dir"] == str(root / "MSRVTT_Videos") and report["missing"] == ["video7010", "video7012"]
    _touch(root / "videos" / "video7011.mp4")
    assert load_split("msrvtt", root).videos[1].path == root / "videos" / "video7011.mp4"

    msvd = tmp_path / "msvd"
    msvd.mkdir()
    (msvd / "test_list.txt").write_text("vidB\n")
    (msvd / "raw-captions.pkl").write_bytes(pickle.dumps({"vidB": [["a", "dog"]]}))
    _touch(msvd / "MSVD_Videos" / "vidB.avi")
    assert load_split("msvd", msvd, "test").videos[0].path == msvd / "MSVD_Videos" / "vidB.avi"
    anet = tmp_path / "anet"
    anet.mkdir()
    (anet / "val_ids.json").write_text(json.dumps(["v_abc"]))
    (anet / "val_1.json").write_text(json.dumps({"v_abc": {"duration": 4, "timestamps": [], "sentences": ["x"]}}))
    _touch(anet / "Activity_Videos" / "v_abc.mp4")
    assert load_split("activitynet", anet, "test").videos[0].path == anet / "Activity_Videos" / "v_abc.mp4"


def test_a_video_id_that_is_not_unicode_text_is_a_damaged_file(tmp_path):
    """A JSON id such as "v_ab\\ud800" (a lone surrogate) passed the reader, and data-check then died with a
    UnicodeEncodeError traceback printing it; it is a damaged annotation file, named in a message that prints."""
    root = tmp_path / "anet"
    root.mkdir()
    (root / "val_ids.json").write_text('["v_abc", "v_ab\\ud800"]')
    (root / "val_1.json").write_text(json.dumps({v: {"duration": 3, "timestamps": [], "sentences": ["x"]}
                                                 for v in ("v_abc", "v_ab\ud800")}))
    with pytest.raises(CheckFailedError, match=r"val_ids\.json has video id 'v_ab\\ud800', which is not") as e:
        load_split("activitynet", root, "test")
    str(e.value).encode("utf-8")  # the message itself prints


def test_an_empty_caption_is_a_damaged_file_naming_file_and_video(tmp_path):
    """An empty or blank caption (an MSR-VTT row without a sentence, an MSVD caption of no words, an ActivityNet
    video without sentences) became a query that matches every video alike, silently; it is a damaged file now,
    named with the video, and the message says what to do."""
    root = _msrvtt(tmp_path / "m")
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\nret0,m,video7010,a cat\n"
                                                   "ret1,m,video7011,   \n")
    with pytest.raises(CheckFailedError, match=r"MSRVTT_JSFUSION_test\.csv has an empty caption '   ' \(row 3, "
                                               r"video 'video7011'\); give it its text or remove it"):
        load_split("msrvtt", root, "test")
    data = json.loads((root / "MSRVTT_data.json").read_text())
    data["sentences"][2]["caption"] = ""
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    with pytest.raises(CheckFailedError, match=r"MSRVTT_data\.json has an empty caption '' \(sentences\[2\], "
                                               r"video 'video1'\)"):
        load_split("msrvtt", root, "train")
    data["sentences"][3]["caption"] = ""  # a video outside the split: never read, not refused
    data["sentences"][2]["caption"] = "a car drives"
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    assert load_split("msrvtt", root, "train").num_captions == 3

    msvd = tmp_path / "msvd"
    msvd.mkdir()
    (msvd / "test_list.txt").write_text("x\n")
    (msvd / "raw-captions.pkl").write_bytes(pickle.dumps({"x": [["a", "cat"], []]}))
    with pytest.raises(CheckFailedError, match=r"raw-captions\.pkl has an empty caption '' \(caption 1 of video 'x'\)"):
        load_split("msvd", msvd, "test")

    anet = tmp_path / "anet"
    anet.mkdir()
    (anet / "val_ids.json").write_text(json.dumps(["v_abc"]))
    (anet / "val_1.json").write_text(json.dumps({"v_abc": {"duration": 4, "timestamps": [], "sentences": []}}))
    with pytest.raises(CheckFailedError, match=r"val_1\.json has an empty caption '' \(the sentences of v_abc\)"):
        load_split("activitynet", anet, "test")
    (anet / "val_1.json").write_text(json.dumps({"v_abc": {"duration": 4, "timestamps": [],
                                                           "sentences": ["A cat.", " "]}}))
    assert load_split("activitynet", anet, "test").captions == ["A cat."]  # one blank sentence of several is kept

    didemo = tmp_path / "didemo"
    didemo.mkdir()
    (didemo / "test_list.txt").write_text("a.mp4\n")
    (didemo / "test_data.json").write_text(json.dumps([{"video": "a.mp4", "description": " ", "times": [[0, 0]]}]))
    with pytest.raises(CheckFailedError, match=r"test_data\.json has an empty caption .* of video 'a\.mp4'"):
        load_split("didemo", didemo, "test")


def test_a_caption_that_is_not_unicode_text_is_a_damaged_file(tmp_path):
    """A JSON caption "\\ud800" (a lone surrogate) was read and tokenized; any output holding it as UTF-8 would
    fail. It is refused like such a video id, in a message that prints."""
    root = _msrvtt(tmp_path / "m")
    text = (root / "MSRVTT_data.json").read_text().replace('"a cat sleeps"', '"a cat \\ud800 sleeps"')
    (root / "MSRVTT_data.json").write_text(text)
    with pytest.raises(CheckFailedError, match=r"MSRVTT_data\.json has a caption that is not Unicode text "
                                               r"\(sentences\[0\], video 'video0': 'a cat \\ud800 sleeps' holds a "
                                               r"lone surrogate at character 6\)") as e:
        load_split("msrvtt", root, "train")
    str(e.value).encode("utf-8")


def test_two_video_ids_naming_one_file_are_a_damaged_list(tmp_path):
    """MSVD ids 'vidA' and 'vidA.avi' (or ActivityNet's 'v_abc' and 'abc') were found as the same file: one video
    was two gallery candidates, tied with itself. The list is refused, naming both ids and the file."""
    root = tmp_path / "msvd"
    root.mkdir()
    (root / "test_list.txt").write_text("vidA\nvidB\nvidA.avi\n")
    (root / "raw-captions.pkl").write_bytes(pickle.dumps({v: [["a", "cat"]] for v in ("vidA", "vidB", "vidA.avi")}))
    _touch(root / "videos" / "vidA.avi")
    with pytest.raises(CheckFailedError, match=r"test_list\.txt lists video ids 'vidA' and 'vidA\.avi', which are "
                                               r"the same file .*vidA\.avi; keep one of them"):
        load_split("msvd", root, "test")
    (root / "videos" / "vidA.avi").unlink()  # missing: both ids would still be reported as one file
    with pytest.raises(CheckFailedError, match="same file"):
        load_split("msvd", root, "test")

    anet = tmp_path / "anet"
    anet.mkdir()
    (anet / "val_ids.json").write_text(json.dumps(["v_abc", "abc"]))
    (anet / "val_1.json").write_text(json.dumps({v: {"duration": 4, "timestamps": [], "sentences": ["x"]}
                                                 for v in ("v_abc", "abc")}))
    _touch(anet / "videos" / "abc.mp4")
    with pytest.raises(CheckFailedError, match=r"val_ids\.json lists video ids 'v_abc' and 'abc'"):
        load_split("activitynet", anet, "test")


def test_annotation_files_too_large_or_not_regular_are_refused_before_reading(tmp_path, monkeypatch):
    """An annotation file is read whole (and parsed into several times its size): one over MAX_ANNOTATION_BYTES is
    a damaged file, named with its size and the limit, before it is read; a FIFO in its place (which would block
    the read) was reported as 'missing' and is named as what it is."""
    import os

    from rap_deploy.data import annotation_files

    root = _msrvtt(tmp_path / "m")
    monkeypatch.setattr(annotation_files, "MAX_ANNOTATION_BYTES", 100)
    size = (root / "MSRVTT_data.json").stat().st_size
    with pytest.raises(CheckFailedError, match=rf"MSRVTT_data\.json is {size:,} bytes, over the 100 an annotation"):
        load_split("msrvtt", root, "train")
    msvd = tmp_path / "msvd"
    msvd.mkdir()
    (msvd / "test_list.txt").write_text("x\n")
    (msvd / "raw-captions.pkl").write_bytes(pickle.dumps({"x": [["w" * 200]]}))
    with pytest.raises(CheckFailedError, match=r"raw-captions\.pkl is \d+ bytes, over the 100"):
        load_split("msvd", msvd, "test")
    monkeypatch.undo()
    (root / "MSRVTT_JSFUSION_test.csv").unlink()
    os.mkfifo(root / "MSRVTT_JSFUSION_test.csv")
    with pytest.raises(UsageError, match=r"MSRVTT_JSFUSION_test\.csv is not a regular file \(a folder, FIFO or "
                                         r"device\)"):
        load_split("msrvtt", root, "test")
