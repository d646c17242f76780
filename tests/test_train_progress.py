"""The training loop's per-epoch console lines (``train/progress.py``)."""

from __future__ import annotations

from rap_deploy.train.progress import epoch_line

RECORD = {"epoch": 12, "loss": 0.1234, "lr": 1e-4, "seconds": 1234.5,
          "t2v": {"R1": 100.0, "R5": 100.0, "R10": 100.0, "MnR": 1.0, "MdR": 1.0},
          "v2t": {"R1": 35.0, "R5": 65.0, "R10": 75.5, "MnR": 1234.5, "MdR": 3.0}}


def test_both_directions_show_the_same_recalls_and_fit_80_columns():
    """v2t's R@10 was left out of the line t2v's is on (and the one line ran to 118 columns)."""
    lines = epoch_line(RECORD, 100).splitlines()
    assert lines[0] == "epoch 12/100  loss 0.1234  lr 1.00e-04  1234.5s"
    t2v, v2t = lines[1:]
    assert t2v.split()[0] == "t2v" and v2t.split()[0] == "v2t"
    assert t2v.split()[1::2] == v2t.split()[1::2] == ["R@1", "R@5", "R@10", "MnR"]
    assert v2t.split()[2::2] == ["35.0", "65.0", "75.5", "1234.5"]
    assert t2v.index("MnR") == v2t.index("MnR")  # the columns align
    assert all(len(line) <= 80 for line in lines)


def test_an_epoch_without_evaluation_is_one_line():
    record = {k: v for k, v in RECORD.items() if k not in ("t2v", "v2t")}
    assert epoch_line(record, 100) == "epoch 12/100  loss 0.1234  lr 1.00e-04  1234.5s"


def test_the_evaluation_before_training_has_no_loss():
    record = {"epoch": 0, "loss": None, "t2v": RECORD["t2v"], "v2t": RECORD["v2t"]}
    assert epoch_line(record, 3).splitlines()[0] == "epoch 0/3"
