"""Report folder names (engines.report_labels): one engine and split, one folder, and no two share one."""

from __future__ import annotations

import pytest

from rap_deploy.engines.report_labels import engine_label, escape_name, report_folder_name
from rap_deploy.engines.verify import default_report_dir


def test_an_engine_named_like_another_engines_split_report_keeps_its_own_folder(tmp_path):
    """An engine folder named ``X-train`` verified on the test split and engine ``X`` verified on ``--split train``
    both reported to verify/X-train, the later replacing the earlier. The split now follows '@', which no label
    holds (an engine folder named ``X@train`` is ``X%40train``)."""
    ws = tmp_path / "ws"
    test_of_x_train = default_report_dir(tmp_path / "X-train", "msrvtt", "test", ws)
    train_of_x = default_report_dir(tmp_path / "X", "msrvtt", "train", ws)
    at_in_name = default_report_dir(tmp_path / "X@train", "msrvtt", "test", ws)
    assert test_of_x_train == ws / "verify" / "X-train"  # the common case keeps its folder
    assert train_of_x == ws / "verify" / "X@train"
    assert at_in_name == ws / "verify" / "X%40train"
    assert len({test_of_x_train, train_of_x, at_in_name}) == 3


@pytest.mark.parametrize(("url", "label"), [
    ("http://[::1]:8000", "remote-ipv6-0-0-0-0-0-0-0-1-8000"),  # was 'remote----1--8000'
    ("http://[::1]:8000/", "remote-ipv6-0-0-0-0-0-0-0-1-8000"),
    ("https://[2001:DB8::5]:443/base", "remote-https_ipv6-2001-db8-0-0-0-0-0-5-443-base"),
    ("http://[fe80::1%25eth0]:8000", "remote-ipv6-fe80-0-0-0-0-0-0-1-eth0-8000"),
    ("http://127.0.0.1:8080", "remote-127.0.0.1-8080"),  # IPv4 and names keep the folders they had
    ("http://my-host:8000/triton//", "remote-my-host-8000-triton"),
])
def test_a_servers_label_writes_an_ipv6_host_as_its_groups(url, label):
    """``http://[::1]:8000`` was labelled ``remote----1--8000``: brackets and colons each a dash, host and port
    unreadable. A bracketed IPv6 host is now ``ipv6-`` and its eight groups."""
    assert engine_label(url) == label


def test_http_and_https_on_one_host_and_port_have_their_own_folders():
    """``remote_label`` dropped the scheme, so ``http://h:80`` and ``https://h:80`` (two servers, or one behind a TLS
    gateway and one not) wrote their verify reports to one folder, the later replacing the earlier. An https label
    now goes on ``remote-https_``; http labels keep the names they had, and no http host (not even one named
    ``https``) takes an https label."""
    http = ["http://h:80", "http://https-h:80", "http://https:80", "http://h_:80", "HTTP://h:80/"]
    https = ["https://h:80", "HTTPS://h:80/"]
    assert [engine_label(u) for u in http] == ["remote-h-80", "remote-https-h-80", "remote-https-80", "remote-h--80",
                                               "remote-h-80"]
    assert [engine_label(u) for u in https] == ["remote-https_h-80", "remote-https_h-80"]
    assert not {engine_label(u) for u in http} & {engine_label(u) for u in https}


def test_labels_of_distinct_names_are_distinct_and_hold_no_separator(tmp_path):
    """Local names keep letters, digits, '.', '_' and '-'; any other character is written %XX, so no two names
    share a label, none holds '@' or a path separator, and no engine folder takes a server's label."""
    names = ["onnxruntime-int8", "tensorrt_fp16", "my engine", "my%20engine", "a@b", "モデル", "100%",
             "remote-127.0.0.1-8080", "a+msvd"]
    labels = [engine_label(tmp_path / name) for name in names]
    assert labels[:3] == ["onnxruntime-int8", "tensorrt_fp16", "my%20engine"]
    assert labels[3:] == ["my%2520engine", "a%40b", "モデル", "100%25", "remote%2D127.0.0.1-8080", "a%2Bmsvd"]
    assert engine_label("http://127.0.0.1:8080") not in labels
    assert len(set(labels)) == len(labels)
    assert not any(c in label for label in labels for c in "@+/\\ ")
    assert report_folder_name("a", "val 2", "msrvtt") == "a@val%202" and report_folder_name("a", None, "msrvtt") == "a"
    assert escape_name("x/y") == "x%2Fy"


def test_a_runs_checkpoints_are_named_after_the_run(tmp_path):
    """best.pt and last.pt of run ``r 1`` report to ``r%201-best`` and ``r%201-last``; another checkpoint to its
    own name."""
    run = tmp_path / "r 1"
    run.mkdir()
    for name in ("best.pt", "last.pt", "other.pt"):
        (run / name).write_bytes(b"")
    assert [engine_label(run / n) for n in ("best.pt", "last.pt", "other.pt")] == ["r%201-best", "r%201-last",
                                                                                 "other"]
