"""Pre-training of the offline default backbone (DESIGN.md §10): a small open_clip CLIP trained from scratch.

The ``rap-tiny`` open_clip config (a 64 px ViT with 8 px patches and a 4-layer text transformer, open_clip's own BPE
tokenizer) is trained contrastively on still images of the synthetic world
(:func:`rap_deploy.data.synth_stills.generate_stills`: colour, size, shape and position captions, never motion). The
result is written with :func:`rap_deploy.backbone_file.save_backbone` and loaded like any other open_clip weights file
(``rapdeploy init --backbone FILE``), then frozen: whatever temporal understanding appears later comes from RAP.
The held-out measurements live in :mod:`rap_deploy.train.backbone_eval`, the optimisation (schedule, batches, losses,
steps) in :mod:`rap_deploy.train.backbone_loop`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from rap_deploy.data import SYNTH_DISTRACTORS
from rap_deploy.data.synth import SIZE_RADIUS
from rap_deploy.errors import UsageError
from rap_deploy.train.backbone_eval import (
    encode_heldout,
    heldout_metrics,
    heldout_score_bytes,
    patch_object_precision,
    reverse_caption_similarity,
)
from rap_deploy.train.backbone_loop import Recipe, Schedule, Stills, optimise
from rap_deploy.train.backbone_losses import named_object_patches, object_patches
from rap_deploy.train.backbone_tokens import check_token_dropping

if TYPE_CHECKING:
    from rap_deploy.config import PreprocessConfig, TokenizerConfig

DEFAULT_CLIP = "rap-tiny"
STILLS_DIR = "stills"
TEST_SEED_OFFSET = 1_000_003  # held-out stills come from a different seed than the training stills


# --------------------------------------------------------------------------------------------------------- stills


def load_or_make_stills(n: int, seed: int, size: int, data_root: str | Path | None, position_twins: bool = False,
                        distractors: float = 0.0) -> tuple[np.ndarray, list[str]]:
    """``generate_stills(n, seed, size, position_twins, distractors)``, cached as
    ``DATA_ROOT/stills/stills-n<n>-s<size>-seed<seed>[-twins][-d<distractors>]-r<object radii>.npz`` (the radii
    of :data:`~rap_deploy.data.synth.SIZE_RADIUS`: stills an earlier version drew with other object sizes are not
    this version's).

    Without ``data_root`` the stills are generated in memory. A cached file that cannot be read is regenerated.
    """
    from rap_deploy.data.synth_stills import generate_stills

    if data_root is None:
        return generate_stills(n, seed, size, position_twins, distractors)
    twins = "-twins" if position_twins else ""
    extra = f"-d{distractors:g}" if distractors > 0 else ""
    radii = "-r" + "-".join(f"{SIZE_RADIUS[k]:g}" for k in sorted(SIZE_RADIUS))
    path = Path(data_root) / STILLS_DIR / f"stills-n{n}-s{size}-seed{seed}{twins}{extra}{radii}.npz"
    if path.is_file() and not path.is_symlink() and _stills_headers_fit(path, n, size):
        try:
            with np.load(path, allow_pickle=False) as data:
                images, captions = data["images"], [str(c) for c in data["captions"]]
            if images.shape == (n, size, size, 3) and len(captions) == n:
                return images, captions
        except Exception:  # unreadable cache entry: regenerate it below
            pass
    images, captions = generate_stills(n, seed, size, position_twins, distractors)
    from rap_deploy.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, images=images, captions=np.asarray(captions, dtype=str))
    return images, captions


def _stills_headers_fit(path: Path, n: int, size: int) -> bool:
    """Whether the cached stills file's arrays are the expected ones by their ``.npy`` headers (read before any
    array, so a damaged or replaced file that claims huge arrays is regenerated, never allocated)."""
    import zipfile

    expected = {"images.npy": ((n, size, size, 3), lambda d: d == np.uint8),
                "captions.npy": ((n,), lambda d: d.kind == "U" and d.itemsize <= 4 * 4096)}
    try:
        with zipfile.ZipFile(path) as zf:
            for name, (shape, dtype_ok) in expected.items():
                with zf.open(name) as fh:
                    read = {(1, 0): np.lib.format.read_array_header_1_0,
                            (2, 0): np.lib.format.read_array_header_2_0}.get(np.lib.format.read_magic(fh))
                    header = read(fh) if read else None  # (shape, fortran order, dtype)
                if header is None or header[0] != shape or not dtype_ok(header[2]):
                    return False
    except Exception:  # noqa: BLE001 - not a stills file: regenerate it
        return False
    return True


# ------------------------------------------------------------------------------------------------------ training


def sincos_position_embedding(grid: tuple[int, int], width: int) -> torch.Tensor:
    """``[1 + gh·gw, width]`` 2-D sine-cosine position table (MAE's), a zero row for the class token first: half of
    the channels encode the patch column, half its row, each at ``width/4`` frequencies."""
    gh, gw = grid
    quarter = width // 4
    freq = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32),
                                indexing="ij")
    parts = []
    for coord in (cols.reshape(-1), rows.reshape(-1)):
        angle = coord[:, None] * freq[None, :]
        parts += [torch.sin(angle), torch.cos(angle)]
    table = torch.cat(parts, dim=1)
    table = F.pad(table, (0, width - table.shape[1]))
    return torch.cat([torch.zeros(1, width), table], dim=0)


def _create_model(clip: str, seed: int) -> torch.nn.Module:
    import open_clip

    from rap_deploy.model.clip_loader import quiet_loading_logs, register_packaged_configs

    register_packaged_configs()
    if clip not in open_clip.list_models():
        raise UsageError(f"open_clip has no model '{clip}'; the offline default is {DEFAULT_CLIP}")
    torch.manual_seed(seed)
    with quiet_loading_logs():
        return open_clip.create_model(clip, pretrained=None, load_weights=False)


def _image_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def pretrain_backbone(out: str | Path, size: int = 64, n_train: int = 4000, n_test: int = 400, epochs: int = 4,
                      seed: int = 0, clip: str = DEFAULT_CLIP, batch_size: int = 128, lr: float = 2e-3,
                      weight_decay: float = 0.1, warmup: float = 0.1, patch_weight: float = 1.0,
                      text_weight: float = 0.0, text_batch: int = 64, position_twins: bool = False,
                      position_init: str = "sincos", patch_keep: float = 1.0, unmasked_epochs: int = 1,
                      distractors: float = SYNTH_DISTRACTORS, data_root: str | Path | None = None,
                      progress: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Train ``clip`` from scratch on ``n_train`` synthetic stills and write it to ``out`` (``.safetensors``).

    Stills are ``size`` px (resized to the model's input with the project's preprocessing when they differ). AdamW
    with linear warm-up and cosine decay, learnable temperature (capped at 100), shuffled batches.

    ``patch_weight`` adds :func:`localisation_loss`: the softmax over an image's patches of their cosine with its
    caption should fall on the patches that show an object (:func:`object_patches`, read off the plain background).
    RAP's ASA selects patches by their cosine with the text; real CLIP's patch tokens are (partly) text-aligned, but
    a small ViT trained from scratch with the CLS loss alone parks its global information in background patches
    (measured: 3-13% of the text-selected top-8 patches were on objects against a 15-18% base rate), so ASA would
    select background. This term gives the stand-in the property the method relies on; it is spatial, never
    temporal, so the temporal modelling still comes from RAP.

    ``text_weight`` (default 0: off) adds a text-only contrastive loss on ``text_batch`` video-style captions per step
    (:mod:`rap_deploy.train.captions`: two paraphrases of each scene, with its time reverse and other hard variants as
    negatives), so the text tower tells actions and their order apart. Measured on the demo's world (6000 stills,
    4 epochs, 200 test videos): without it a caption and its time reverse's caption have cosine 0.78 and zero-shot
    t2v R@1 is 18.5; with weight 1 (or 0.2) that cosine drops to 0.33 but the video captions leave the image-aligned
    space: zero-shot t2v R@1 falls to 7.5 (3.5) and RAP trained one epoch reaches 14.0 (15.0) instead of 19.5. It is
    therefore an opt-in. The held-out ``text`` metrics (:func:`reverse_caption_similarity`) are reported either way.
    The vision tower never sees motion.

    ``position_init`` (default ``"sincos"``) starts the ViT's learned position table from MAE's 2-D sine-cosine table
    (:func:`sincos_position_embedding`) instead of open_clip's small random one; ``"random"`` keeps open_clip's.
    Measured (6000 stills, 4 epochs, batch 128 = 187 steps, one thread): held-out i2t R@1 34.8 vs 23.3, t2i 36.8 vs
    28.0, shape 61.5 vs 55.7 %, caption-level position 35.7 vs 18.9 %, and a linear probe of the frozen image
    embedding finds the object's 3x3 cell 80.1 % of the time (random init: 15-18 %, majority class 12.3 %), i.e. the
    frames RAP sees now change as an object moves. On the demo's world (seed 0) zero-shot t2v R@1 is 20.5 (19.5
    before) and RAP after one caption epoch 21.5.

    ``position_twins`` (default off) pairs every training still with the same objects in other cells and keeps the pair
    in one batch (:func:`rap_deploy.data.synth_stills.generate_stills`), hard negatives that differ only by position.
    Measured: alone it lifts position only 18.9 → 22.1 % and costs i2t (23.3 → 19.0); with ``sincos`` it costs i2t
    34.8 → 20.3 and position 35.7 → 20.9. Kept as an opt-in.

    ``patch_keep`` (default 1: every token) runs the image tower of each training step on that fraction of each
    still's patch tokens, the object patches first (:mod:`rap_deploy.train.backbone_tokens`); the last
    ``unmasked_epochs`` epochs see every token, so the tower ends on the token set it is evaluated and used with.
    Measured (6000 stills, 12 epochs, the last on every token, one thread): keep 0.5 reaches held-out i2t R@1 83.3,
    size 98.8 %, shape 76.2 %, position 100 % in 760 CPU-s, level with 12 epochs on every token (84.8, shape 77.9 %;
    1,214 CPU-s under load); keep 0.25 loses size and shape (i2t 38.0, size 63.9 %, shape 39.3 %) in 586 CPU-s.
    Captions are always encoded up to the batch's longest one (exact), and without the text loss only the training
    captions' embedding rows are trained (:func:`compact_token_embedding`).

    ``distractors`` (default: the synthetic world's, as for its videos) is the fraction of stills (training and
    held-out) that also show an object the caption does not name (:func:`rap_deploy.data.synth_stills.generate_stills`);
    the localisation term then asks for the named objects' patches only (:func:`named_object_patches`), so the text
    picks out the object it names, not every object. That is what lets RAP's text-conditioned patch selection
    differ from selection by the frame's own saliency on videos with distractors.

    After training, the held-out metrics (:func:`heldout_metrics`, on ``n_test`` stills from another seed) are
    computed and stored with the weights. Returns the info dict stored in the file (metrics, seed, settings) plus the
    run's timings (``seconds``, ``cpu_seconds``, ``data_seconds``, ``train_seconds``) and ``out``. The timings stay
    out of the file: the same settings on the same kernels write the same bytes, and runs know a backbone by its
    sha256 (``ablate`` reads back runs of another world only when its backbone file is the same).
    Raises :class:`UsageError` for bad settings.
    """
    out = _checked_settings(out, n_train, n_test, epochs, batch_size, patch_keep, unmasked_epochs, position_twins)
    if threads:
        torch.set_num_threads(threads)
    clock = _Clock()
    model = new_backbone_model(clip, seed, position_init, patch_keep)
    cfg, tok = model_inputs(model)
    train = prepare_stills(model, n_train, seed, size, data_root, position_twins, cfg, tok, distractors)
    test = prepare_stills(model, n_test, seed + TEST_SEED_OFFSET, size, data_root, False, cfg, tok, distractors)
    clock.lap("data_seconds")
    schedule = Schedule.of(n_train, batch_size, epochs, warmup)
    recipe = Recipe(seed=seed, epochs=epochs, lr=lr, patch_weight=patch_weight, text_weight=text_weight,
                    text_batch=text_batch, position_twins=position_twins, patch_keep=patch_keep,
                    masked_epochs=epochs - unmasked_epochs if patch_keep < 1.0 else 0)
    losses = optimise(model, train, schedule, recipe, weight_decay, cfg, tok, progress)
    clock.lap("train_seconds")
    metrics = _heldout_evaluation(model, test, cfg, tok, seed)
    settings = {"clip": clip, "seed": seed, "size": size, "image_size": cfg.image_size, "n_train": n_train,
                "n_test": n_test, "epochs": epochs, "lr": lr, "weight_decay": weight_decay,
                "position_init": position_init, "distractors": distractors, "object_radius": dict(SIZE_RADIUS)}
    info = _backbone_info(model, settings, schedule, recipe, losses, metrics)
    _save(model, clip, out, info)
    return {**info, **clock.totals(), "out": str(out)}


# ------------------------------------------------------------------------------------- pre-training steps
# new_backbone_model, model_inputs and prepare_stills are public: backbone_cost.py times a step on the same set-up.


def new_backbone_model(clip: str, seed: int, position_init: str, patch_keep: float) -> torch.nn.Module:
    """The open_clip model ``clip``, created from ``seed`` (untrained), with its position table initialised as
    ``position_init`` (``"random"`` or ``"sincos"``) asks.

    Raises :class:`UsageError` for an unknown model or initialisation, or token dropping (``patch_keep < 1``) the
    model cannot do.
    """
    model = _create_model(clip, seed)
    _init_position_table(model, clip, position_init)
    if patch_keep < 1.0:
        check_token_dropping(model, clip)
    return model


def model_inputs(model: torch.nn.Module) -> tuple[PreprocessConfig, TokenizerConfig]:
    """``(preprocess config, tokenizer config)``: the model's input size and its text context, which the stills go
    through (:func:`prepare_stills`)."""
    from rap_deploy.config import PreprocessConfig, TokenizerConfig

    return (PreprocessConfig(image_size=_image_size(model)),
            TokenizerConfig(context_length=int(model.positional_embedding.shape[0])))


def _save(model: torch.nn.Module, clip: str, out: Path, info: dict[str, Any]) -> None:
    """Write the trained weights (in eval mode) with ``info`` to ``out``
    (:func:`~rap_deploy.backbone_file.save_backbone`)."""
    from rap_deploy.backbone_file import save_backbone

    model.eval()
    save_backbone(model.state_dict(), clip, out, info)


class _Clock:
    """Wall and CPU seconds since a run began, with named laps (wall seconds since the previous lap)."""

    def __init__(self) -> None:
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.last, self.laps = self.start, {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name], self.last = now - self.last, now

    def totals(self) -> dict[str, float]:
        """``seconds`` and ``cpu_seconds`` so far, then each lap, rounded to 0.01 s."""
        spent = {"seconds": time.perf_counter() - self.start, "cpu_seconds": time.process_time() - self.cpu_start}
        return {k: round(v, 2) for k, v in {**spent, **self.laps}.items()}


def _checked_settings(out: str | Path, n_train: int, n_test: int, epochs: int, batch_size: int, patch_keep: float,
                      unmasked_epochs: int, position_twins: bool) -> Path:
    """``out`` as a Path; raises :class:`UsageError` for a non-``.safetensors`` file, too small counts, a token
    share or unmasked epoch count out of range, position twins with an odd still count or batch size, or more
    held-out stills than the memory available can score (:func:`heldout_score_bytes`: refused before training)."""
    from rap_deploy import bounds

    out = Path(out)
    if out.suffix != ".safetensors":
        raise UsageError(f"backbone file {out} must end in .safetensors")
    if n_train < 2 or n_test < 2 or epochs < 1 or batch_size < 2:
        raise UsageError(f"need n_train >= 2, n_test >= 2, epochs >= 1, batch size >= 2; got {n_train}, {n_test}, "
                         f"{epochs}, {batch_size}")
    if not 0.0 < patch_keep <= 1.0 or not 0 <= unmasked_epochs <= epochs:
        raise UsageError(f"need 0 < patch_keep <= 1 and 0 <= unmasked_epochs <= epochs; got {patch_keep}, "
                         f"{unmasked_epochs} (epochs {epochs})")
    if position_twins and (n_train % 2 or batch_size % 2):
        raise UsageError(f"position twins need an even n_train and batch size; got {n_train}, {batch_size}")
    bounds.check_memory(heldout_score_bytes(n_test), f"scoring {n_test:,} held-out stills (an {n_test:,} x "
                        f"{n_test:,} score matrix)", "pass fewer --test-stills")
    return out


def _backbone_info(model: torch.nn.Module, settings: dict[str, Any], schedule: Schedule, recipe: Recipe,
                   losses: list[float], metrics: dict[str, Any]) -> dict[str, Any]:
    """The record stored with the weights: the run's settings, its losses and held-out metrics; nothing that differs
    between two runs of the same settings (wall and CPU seconds), so that the file is a function of them."""
    s = settings
    return {
        **{k: s[k] for k in ("clip", "seed", "size", "image_size", "n_train", "n_test", "epochs")},
        "steps": len(losses), "batch_size": schedule.batch, "lr": s["lr"], "weight_decay": s["weight_decay"],
        "patch_weight": recipe.patch_weight, "text_weight": recipe.text_weight,
        "position_twins": recipe.position_twins, "position_init": s["position_init"],
        "patch_keep": recipe.patch_keep, "masked_epochs": recipe.masked_epochs, "distractors": s["distractors"],
        "object_radius": s["object_radius"],
        "warmup_steps": schedule.warm,
        "final_loss": float(np.mean(losses[-max(1, schedule.steps_per_epoch // 4):])),
        "first_loss": losses[0], "logit_scale": float(model.logit_scale.detach().exp()), "heldout": metrics,
        "threads": torch.get_num_threads(), "captions": "colour, size, shape, position (no motion)",
    }


def _init_position_table(model: torch.nn.Module, clip: str, position_init: str) -> None:
    """With ``"sincos"``, overwrite the ViT's position table with :func:`sincos_position_embedding`.

    Raises :class:`UsageError` for an unknown ``position_init`` or, with ``"sincos"``, a model without a class token
    and a learned position table.
    """
    if position_init not in ("random", "sincos"):
        raise UsageError(f"position_init must be 'random' or 'sincos', got {position_init!r}")
    if position_init == "sincos":
        pos = getattr(model.visual, "positional_embedding", None)
        grid = getattr(model.visual, "grid_size", None)
        if pos is None or grid is None or pos.shape[0] != 1 + grid[0] * grid[1]:
            raise UsageError(f"position_init 'sincos' needs a ViT with a class token and a learned position table; "
                             f"{clip} has none: pass position_init 'random' (--position-init random)")
        with torch.no_grad():
            pos.copy_(sincos_position_embedding(tuple(model.visual.grid_size), pos.shape[1]))


def prepare_stills(model: torch.nn.Module, n: int, seed: int, size: int, data_root: str | Path | None,
                   twins: bool, cfg: PreprocessConfig, tok: TokenizerConfig, distractors: float = 0.0) -> Stills:
    """The :class:`Stills` of one run: ``n`` stills of ``seed`` drawn at ``size`` px (:func:`load_or_make_stills`,
    cached under ``data_root`` when given; ``twins``: position twins), resized to the model's input size (``cfg``),
    their captions tokenised with ``tok``, and the patches that show an object (all objects, and the named ones)."""
    from rap_deploy.preprocess import resize_crop
    from rap_deploy.tokenizer import tokenize

    grid = tuple(model.visual.grid_size)
    images, captions = load_or_make_stills(n, seed, size, data_root, twins, distractors)
    images = resize_crop(images, cfg) if images.shape[1] != cfg.image_size else images
    ids, _ = tokenize(captions, tok)
    return Stills(images=torch.from_numpy(images), ids=torch.from_numpy(ids).long(), captions=captions,
                   on_object=torch.from_numpy(object_patches(images, grid)),
                   named=torch.from_numpy(named_object_patches(images, captions, grid)))


def _heldout_evaluation(model: torch.nn.Module, test: Stills, cfg: PreprocessConfig, tok: TokenizerConfig, seed: int
                        ) -> dict[str, Any]:
    """The held-out metrics: :func:`heldout_metrics` plus ``patch_selection`` and ``text``."""
    image_emb, patch_emb, text_emb = encode_heldout(model, test.images, test.ids, cfg)
    metrics = heldout_metrics(image_emb, text_emb, test.captions)
    metrics["patch_selection"] = patch_object_precision(patch_emb, text_emb, test.named.numpy())
    metrics["text"] = reverse_caption_similarity(model, tok, seed + TEST_SEED_OFFSET)
    return metrics
