"""Still images of the synthetic world (:mod:`rap_deploy.data.synth`), for pre-training the small backbone.

One or two objects with the videos' colours, shapes, sizes and background, each inside a cell of a 3x3 grid, and
captions about colour, size, shape and position only, never motion; optionally a distractor the caption does not
name. The scene model, the constants and the renderer they share with the videos live in
:mod:`rap_deploy.data.synth`; this module holds only what the stills add: the grid (:data:`POSITIONS`), the placement
in its cells, the still captions, and which patches show which colours (:func:`colour_patches`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from rap_deploy.data.synth import (
    BACKGROUND,
    COLOURS,
    EDGE,
    SCALE_RANGE,
    SHAPES,
    SIZE_RADIUS,
    SIZE_WORDS,
    SceneSpec,
    SynthObject,
    render_scene,
)
from rap_deploy.errors import UsageError

POSITIONS = {  # (column, row) of a 3x3 grid -> phrase, for the still images
    (0, 0): "at the top left", (1, 0): "at the top", (2, 0): "at the top right",
    (0, 1): "on the left", (1, 1): "in the center", (2, 1): "on the right",
    (0, 2): "at the bottom left", (1, 2): "at the bottom", (2, 2): "at the bottom right",
}


def generate_stills(n: int, seed: int, size: int = 96, position_twins: bool = False, distractors: float = 0.0
                    ) -> tuple[np.ndarray, list[str]]:
    """Return ``(images uint8 [n, size, size, 3], captions)``: still frames of the synthetic world.

    One or two objects with the videos' colours, shapes, sizes and background, each inside a cell of a 3x3 grid;
    captions name colour, size, shape and position ("a big red circle at the top left and a small blue square in the
    center"), never motion. Deterministic for a seed.

    With ``position_twins`` every odd still ``2k+1`` shows the objects of still ``2k`` (same colour, shape, size and
    scale) moved to other cells, so a batch holding both needs position to tell them apart (a hard negative for the
    contrastive loss); ``n`` must then be even.

    A ``distractors`` fraction of the stills also show a distractor, as the videos do
    (:func:`rap_deploy.data.synth._add_distractor`): one more object, in a colour no named object has, that the
    caption does not name. Which patches the caption speaks of can then be read off its colours
    (:func:`named_colours`).
    """
    if n < 0 or size < 16:
        raise UsageError(f"need n >= 0 and size >= 16, got n {n}, size {size}")
    if position_twins and n % 2:
        raise UsageError(f"position twins need an even number of stills, got {n}")
    if not 0.0 <= distractors <= 1.0:
        raise UsageError(f"distractors is a fraction of the stills, 0 to 1; got {distractors}")
    rng = np.random.default_rng([seed, 7])
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    captions: list[str] = []
    cells = list(POSITIONS)
    objects: list[SynthObject] = []
    named = 0
    for k in range(n):
        if position_twins and k % 2:
            objects = _position_twin(rng, objects, cells)
        else:
            objects, named = _random_still(rng, cells, distractors)
        images[k] = render_scene(SceneSpec(tuple(objects), ()), np.zeros(1), size, 2.0)[0]
        captions.append(_still_caption(rng, objects[:named]))
    return images, captions


def _random_still(rng: np.random.Generator, cells: list[tuple[int, int]], distractors: float
                  ) -> tuple[list[SynthObject], int]:
    """The objects of a new still, each in its own grid cell and apart from the others, and how many of them the
    caption names: one or two named objects in random order, then, with probability ``distractors``, a distractor
    in a colour none of them has."""
    while True:
        named = n_obj = 1 + int(rng.integers(2))
        if distractors > 0.0 and rng.random() < distractors:
            n_obj += 1
        looks = set()
        while len(looks) < named:
            looks.add((list(COLOURS)[int(rng.integers(len(COLOURS)))], SHAPES[int(rng.integers(len(SHAPES)))]))
        ordered = sorted(looks)
        if n_obj > named:  # the distractor goes last, in a colour of its own
            free = [c for c in COLOURS if c not in {colour for colour, _ in ordered}]
            ordered.append((free[int(rng.integers(len(free)))], SHAPES[int(rng.integers(len(SHAPES)))]))
        chosen = [cells[int(i)] for i in rng.choice(len(cells), size=n_obj, replace=False)]
        objects = [_object_in_cell(rng, colour, shape, cell) for (colour, shape), cell in zip(ordered, chosen,
                                                                                               strict=True)]
        if _apart(objects):
            break
    shown = objects[:named]
    rng.shuffle(shown)
    return shown + objects[named:], named


def _object_in_cell(rng: np.random.Generator, colour: str, shape: str, cell: tuple[int, int]) -> SynthObject:
    """An object of a random size and scale placed inside grid ``cell`` (column, row) with its margin."""
    sz = ("small", "big")[int(rng.integers(2))]
    scale = float(rng.uniform(*SCALE_RANGE))
    x, y = _point_in_cell(rng, cell, SIZE_RADIUS[sz] * scale + EDGE)
    return SynthObject(colour, shape, sz, x, y, scale)


def named_colours(caption: str) -> set[str]:
    """The colours a still caption names: the colours of the objects it speaks of (a distractor has none of them)."""
    return {w for w in caption.split() if w in COLOURS}


def colour_patches(images: np.ndarray, colours: list[set[str]], grid: tuple[int, int],
                   min_fraction: float = 0.05) -> np.ndarray:
    """``[N, P]`` bool: the patches of uint8 images ``[N,S,S,3]`` of the synthetic world that show an object in one
    of ``colours[i]`` (image ``i``), on a ``grid`` of patches.

    Each pixel that differs from the background (L1 over 30, as the backbone's object patches) belongs to the world
    colour whose direction from the background it is closest to (an anti-aliased edge pixel is a blend of its
    object's colour and the background); a patch counts when over ``min_fraction`` of its pixels belong to one of
    the asked colours. Objects of one scene never share a colour with a distractor, so this tells them apart.
    """
    n, size = images.shape[0], images.shape[1]
    gh, gw = grid
    names = list(COLOURS)
    background = np.asarray(BACKGROUND, np.float32)
    directions = np.asarray([COLOURS[c] for c in names], dtype=np.float32) - background
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wanted = np.zeros((n, len(names)), dtype=bool)
    for i, asked in enumerate(colours):
        wanted[i, [names.index(c) for c in asked]] = True
    out = np.empty((n, gh * gw), dtype=bool)
    for lo in range(0, n, 256):  # bounded memory: the float copies are 256 images at a time
        away = images[lo:lo + 256].astype(np.float32) - background  # [B,S,S,3]
        b = len(away)
        nearest = np.argmax(away @ directions.T, axis=-1).reshape(b, -1)  # the norm of ``away`` is common: cosine
        hit = (np.abs(away).sum(-1) > 30) & np.take_along_axis(wanted[lo:lo + b], nearest, axis=1).reshape(
            b, size, size)
        out[lo:lo + b] = hit.reshape(b, gh, size // gh, gw, size // gw).mean(axis=(2, 4)).reshape(b, -1) > min_fraction
    return out


def _still_caption(rng: np.random.Generator, objects: list[SynthObject]) -> str:
    """A random caption of a still: each object's size word, colour, shape and grid cell, joined by "and"."""
    phrases = [
        f"a {SIZE_WORDS[o.size][int(rng.integers(2))]} {o.colour} {o.shape} {POSITIONS[_cell(o.x, o.y)]}"
        for o in objects
    ]
    text = " and ".join(phrases)
    return text if rng.random() < 0.7 else f"there is {text}"


def _position_twin(rng: np.random.Generator, originals: list[SynthObject], cells: list[tuple[int, int]]
                   ) -> list[SynthObject]:
    """``originals`` redrawn in other cells of the 3x3 grid (every object leaves its cell), in the same order."""
    old = [_cell(o.x, o.y) for o in originals]
    while True:
        free = [c for c in cells if c not in old] if len(old) == 1 else cells
        chosen = [free[int(i)] for i in rng.choice(len(free), size=len(old), replace=False)]
        if any(c == o for c, o in zip(chosen, old, strict=True)):
            continue
        objects = []
        for o, cell in zip(originals, chosen, strict=True):
            x, y = _point_in_cell(rng, cell, SIZE_RADIUS[o.size] * o.scale + EDGE)
            objects.append(replace(o, x=x, y=y))
        if len(objects) == 1 or _apart(objects):
            return objects


def _point_in_cell(rng: np.random.Generator, cell: tuple[int, int], margin: float) -> tuple[float, float]:
    """A random centre ``(x, y)`` inside grid ``cell`` (column, row) for an object reaching ``margin`` from it."""
    col, row = cell
    x = _in_cell(rng, col, margin)
    return x, _in_cell(rng, row, margin)


def _in_cell(rng: np.random.Generator, cell: int, margin: float) -> float:
    """A random coordinate in grid column/row ``cell``, 0.03 inside its borders and ``margin`` from the frame edge
    (the cell centre, clamped, when that leaves no room)."""
    lo = max(cell / 3.0 + 0.03, margin)
    hi = min((cell + 1) / 3.0 - 0.03, 1.0 - margin)
    return float(rng.uniform(lo, hi)) if lo < hi else float(min(max((cell + 0.5) / 3.0, margin), 1.0 - margin))


def _cell(x: float, y: float) -> tuple[int, int]:
    """The (column, row) of the 3x3 grid cell holding the point ``(x, y)`` (fractions of the frame)."""
    return min(int(x * 3.0), 2), min(int(y * 3.0), 2)


def _apart(objects: list[SynthObject]) -> bool:
    """Whether every two objects' centres are more than 1.2x their summed radii plus ``EDGE`` apart (no overlap)."""
    for i, a in enumerate(objects):
        for b in objects[i + 1:]:
            ra, rb = SIZE_RADIUS[a.size] * a.scale, SIZE_RADIUS[b.size] * b.scale
            if float(np.hypot(a.x - b.x, a.y - b.y)) <= 1.2 * (ra + rb) + EDGE:
                return False
    return True
