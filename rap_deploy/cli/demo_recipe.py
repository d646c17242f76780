"""The offline default's sizes and training recipe: :class:`DemoSizes` (how big the synthetic world is, how the
backbone is pre-trained, how RAP is trained, what bench and the library step run) and :func:`train_options` (that
recipe as training options). ``rapdeploy demo`` runs it, ``rapdeploy ablate`` trains every ablation row with it and
the GPU check builds its engines from it: one definition of the recipe for all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rap_deploy.data import SYNTH_DISTRACTORS

if TYPE_CHECKING:
    from rap_deploy.train.loop import TrainOptions


@dataclass(frozen=True)
class DemoSizes:
    """How big the offline world is and the training recipe. ``default`` is sized for 15 minutes on a 2-core CPU;
    ``tiny`` is for tests. ``rapdeploy ablate`` trains every ablation row with this recipe.

    Where the time goes (wall seconds at two threads, fresh runs): on a 2-core AMD EPYC with AVX-512 VNNI the whole
    demo took 464 to 483 s (three runs, 2026-12-04; README: "CPU memory"): backbone pre-training about 230, two RAP
    epochs with three evaluations of the 200-video test split about 145 (epoch 0 is the zero-shot row), verify of
    two engines about 35 (the reference is evaluated once for both), bench 40 (20 since its pauses end when the
    threads of the previous backend have parked, ``df6f8dc``), synth 14, export, engines and library
    about 20. The slowest 2-core machine measured, an AMD EPYC with AVX2 only, took 16 min 12 s at ``4a783e3``
    (pre-training 416, RAP training 388): over the budget there (the README's set-up section). RAP training now
    takes 0.84× what it took at that commit (both side by side on the AVX-512 EPYC), which would put that machine's
    demo at about 900 s, on the line, and bench's shorter pauses at about 880 s (estimates; docs/demo-history.md:
    "The demo at 4a783e3 and now", "Bench's pauses"). Its cores are the slower part, not its instruction set: the
    AVX-512 EPYC held to AVX2 kernels ran the demo in the time it takes without (511 against 518 s side by side;
    docs/demo-history.md: "The instruction set").

    The backbone is what decides RAP's gain here: pre-trained for 4 epochs (image→caption R@1 35 on held-out stills)
    three RAP epochs reached zero-shot + 5.2 t2v R@1 over three seeds; pre-trained for 12 epochs (R@1 84.8) +19.0.
    Twelve full epochs cost three times four, so 11 of the 12 run on half of each still's patch tokens, object
    patches first (``backbone_patch_keep``; 0.25 lost size and shape: image→caption R@1 38.0), and the last on all
    of them; two RAP epochs then fit the budget (three seeds: see the README's ablation).

    The adapters have the ``paper`` preset's sizes (LoRM rank 2, the ASA head at the joint width). At LoRM rank 4
    and ASA width 64 (the recipe before) text-conditioned selection was worth 0.7 held-out R@1 points over saliency
    selection, under ``rap``'s seed spread; at these sizes 1.9 over five seeds, ahead on each (README: "Ablation";
    both on the Xeon's backbone: on a second machine's, at 5× LoRM, +0.05 over five seeds, "A second machine").

    LoRM's factors learn at five times the rate of the ASA head (``lorm_lr_mult``): LoRM is a per-frame scale that
    starts at the identity, and at the shared rate it stayed close to it (max |S − 1| 0.58 in the demo, 3.59 at 5×).
    5× lifted LoRM alone from zero-shot + 5.2 to + 10.0 test t2v R@1 (three seeds), and over ten seeds ``rap``'s
    two-stage search from 0.8 to 2.5 held-out R@1 points over ASA alone, while the full similarity's R@1 stayed within
    its seed spread (docs/ablation-history.md: "LoRM at five times the learning rate").
    """

    videos: int = 500
    test_videos: int = 200
    size: int = 64
    seed: int = 0
    # share of videos and stills with an unnamed object (docs/ablation-history.md: Distractors)
    distractors: float = SYNTH_DISTRACTORS
    backbone_clip: str = "rap-tiny"
    backbone_train: int = 6000
    backbone_epochs: int = 12
    backbone_text_weight: float = 0.0
    backbone_position_init: str = "sincos"
    backbone_patch_keep: float = 0.5
    backbone_unmasked_epochs: int = 1
    frames: int = 12
    epochs: int = 2
    epoch_unit: str = "caption"
    batch_size: int = 16
    lr: float = 5e-3
    offset_lr_mult: float = 10.0
    lorm_lr_mult: float = 5.0
    # contrastive loss alone (docs/ablation-history.md: text against saliency selection)
    selection_loss_weight: float = 0.0
    preset: str = "paper"  # adapter sizes; an asa_dim given here wins over the preset's (the tiny recipe's 16)
    asa_topk: int = 8
    asa_heads: int = 4
    asa_dim: int | None = None
    bench_batch_sizes: tuple[int, ...] = (1, 8)
    bench_repeats: int = 5
    bench_index_size: int = 500
    top_m: int = 20

    @classmethod
    def tiny(cls) -> DemoSizes:
        """A reduced demo for tests: a handful of videos, the micro backbone, one epoch."""
        # A backbone trained for a few steps, not one: on a random-init backbone the captions' embeddings are
        # near-identical and int8 quantisation noise alone reorders them (measured: ΔR@5 −25 on 8 queries).
        return cls(videos=16, test_videos=8, size=32, backbone_clip="rap-micro", backbone_train=512,
                   backbone_epochs=2, frames=4, epochs=1, batch_size=8, asa_topk=4, asa_heads=2, asa_dim=16,
                   bench_batch_sizes=(1, 2), bench_repeats=1, bench_index_size=16, top_m=4)


def train_options(sizes: DemoSizes, data: Path, run_dir: Path, frame_cache: Path, **model: Any) -> TrainOptions:
    """The demo's training recipe as :class:`~rap_deploy.train.loop.TrainOptions` (``model``: where the model comes
    from, ``checkpoint=`` or ``clip=``/``pretrained=`` with adapter sizes, and any other option to change)."""
    from rap_deploy.train.loop import TrainOptions

    return TrainOptions(**{"dataset": "msrvtt", "data_root": str(data), "out": str(run_dir), "epochs": sizes.epochs,
                           "batch_size": sizes.batch_size, "lr": sizes.lr, "offset_lr_mult": sizes.offset_lr_mult,
                           "lorm_lr_mult": sizes.lorm_lr_mult,
                           "selection_loss_weight": sizes.selection_loss_weight, "epoch_unit": sizes.epoch_unit,
                           "seed": sizes.seed, "top_m": sizes.top_m,
                           "cache_dir": str(frame_cache), **model})
