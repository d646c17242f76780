"""The offline default dataset (DESIGN.md §10): coloured shapes that move, in the exact MSR-VTT layout.

A scene has one or two objects (6 colours x 4 shapes x 2 sizes on a plain background) and one or two events, one
after the other: move left/right/up/down, grow/shrink, appear/disappear. Captions state colour, size, shape, motion and
order ("a small red circle moves to the left, then a big blue square appears"), with several paraphrases per video.
With ``--distractors P`` (default 0) each drawn scene also gets, with probability P, a distractor: a static object in
another colour that no caption names.

Frame order matters by construction. Events fill the interval [0.5 s, seconds - 1.5 s], which is symmetric under
``t -> (seconds - 1) - t``, so the time reverse of every scene is again a valid scene (events reversed and in reverse
order), and it shows the very same frames at the 1-fps sampling times, in reverse order. Test videos come in such
pairs: a model that pools frames without knowing their order cannot tell the two apart. Every test caption is unique
within the test split, so an oracle reaches R@1 = 100.

This module holds the scene model (colours, shapes, sizes, events), captions and their parser, rendering and random
scenes; the dataset writer is :mod:`rap_deploy.data.synth_dataset`. The still images of the same world, with
captions about colour, size, shape and position only (never motion), for pre-training the small backbone, live in
:mod:`rap_deploy.data.synth_stills`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

BACKGROUND = (40, 40, 40)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 45, 45),
    "green": (50, 190, 70),
    "blue": (50, 100, 240),
    "yellow": (245, 215, 40),
    "purple": (165, 70, 215),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle", "diamond")
# Radius as a fraction of the frame side: 17 and 27 px across at 64 px (±10 % jitter), 2.1 and 3.4 of the backbone's
# 8 px patches. At 0.10 / 0.16 (13 and 20 px) a patch showed an object's colour more plainly than its shape, and the
# caption's top-k patches lifted same-colour, other-shape videos as much as the right one
# (docs/ablation-history.md: "The earlier world").
SIZE_RADIUS = {"small": 0.13, "big": 0.21}
SIZE_WORDS = {"small": ("small", "little"), "big": ("big", "large")}
ACTIONS = ("left", "right", "up", "down", "grow", "shrink", "appear", "disappear")
REVERSE = {
    "left": "right", "right": "left", "up": "down", "down": "up",
    "grow": "shrink", "shrink": "grow", "appear": "disappear", "disappear": "appear",
}
MOVES = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
ACTION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("moves to the left", "slides to the left", "goes left"),
    "right": ("moves to the right", "slides to the right", "goes right"),
    "up": ("moves up", "rises", "goes up"),
    "down": ("moves down", "sinks", "goes down"),
    "grow": ("grows", "gets bigger", "expands"),
    "shrink": ("shrinks", "gets smaller", "contracts"),
    "appear": ("appears", "fades in", "comes into view"),
    "disappear": ("disappears", "fades out", "vanishes"),
}
CONNECTORS = ("{a}, then {b}", "{a} and then {b}", "first {a}, then {b}", "{a}, after that {b}")
MOVE_RANGE = (0.34, 0.44)  # distance of a move, fraction of the frame side
SCALE_RANGE = (0.9, 1.1)  # per-object jitter of the radius
EDGE = 0.02
EVENT_START = 0.5  # seconds; events end at (seconds - 1) - EVENT_START


# --------------------------------------------------------------------------------------------------- scene model


@dataclass(frozen=True)
class SynthObject:
    """An object at the start of the video: colour, shape, size class, centre (fractions of the frame), radius
    jitter ``scale``."""

    colour: str
    shape: str
    size: str
    x: float
    y: float
    scale: float = 1.0


@dataclass(frozen=True)
class SynthEvent:
    """Object ``obj`` does ``action``; ``amount`` is the distance of a move (fraction of the frame side)."""

    obj: int
    action: str
    amount: float = 0.0


@dataclass(frozen=True)
class SceneSpec:
    """A video's content: objects and their events, which happen one after the other."""

    objects: tuple[SynthObject, ...]
    events: tuple[SynthEvent, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (stored as ``synth`` in every video entry of ``MSRVTT_data.json``)."""
        return {"objects": [asdict(o) for o in self.objects], "events": [asdict(e) for e in self.events]}

    @property
    def has_distractor(self) -> bool:
        """Whether an object owns no event: a distractor, which no caption names (:func:`_add_distractor`)."""
        return len(self.objects) > len({e.obj for e in self.events})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            objects=tuple(SynthObject(**o) for o in d["objects"]),
            events=tuple(SynthEvent(**e) for e in d["events"]),
        )


@dataclass(frozen=True)
class _Keyframes:
    """Per-object state at the event boundaries: x, y, radius, alpha, size class; arrays ``[objects, events + 1]``."""

    x: np.ndarray
    y: np.ndarray
    r: np.ndarray
    alpha: np.ndarray
    size: list[list[str]]


def _keyframes(spec: SceneSpec) -> _Keyframes:
    n_obj, n_ev = len(spec.objects), len(spec.events)
    x = np.zeros((n_obj, n_ev + 1))
    y = np.zeros_like(x)
    r = np.zeros_like(x)
    alpha = np.zeros_like(x)
    size = [[o.size] * (n_ev + 1) for o in spec.objects]
    for i, o in enumerate(spec.objects):
        first = next((e.action for e in spec.events if e.obj == i), None)
        x[i, 0], y[i, 0] = o.x, o.y
        r[i, 0] = SIZE_RADIUS[o.size] * o.scale
        alpha[i, 0] = 0.0 if first == "appear" else 1.0
    for k, e in enumerate(spec.events):
        x[:, k + 1], y[:, k + 1], r[:, k + 1], alpha[:, k + 1] = x[:, k], y[:, k], r[:, k], alpha[:, k]
        for i in range(n_obj):
            size[i][k + 1] = size[i][k]
        i, o = e.obj, spec.objects[e.obj]
        if e.action in MOVES:
            dx, dy = MOVES[e.action]
            x[i, k + 1] += dx * e.amount
            y[i, k + 1] += dy * e.amount
        elif e.action in ("grow", "shrink"):
            size[i][k + 1] = "big" if e.action == "grow" else "small"
            r[i, k + 1] = SIZE_RADIUS[size[i][k + 1]] * o.scale
        else:
            alpha[i, k + 1] = 1.0 if e.action == "appear" else 0.0
    return _Keyframes(x, y, r, alpha, size)


def _boundaries(n_events: int, seconds: float) -> np.ndarray:
    """Event boundary times: ``n_events`` equal intervals over [EVENT_START, seconds - 1 - EVENT_START]."""
    return np.linspace(EVENT_START, seconds - 1.0 - EVENT_START, n_events + 1)


def scene_state(spec: SceneSpec, times: np.ndarray, seconds: float) -> dict[str, np.ndarray]:
    """Return ``x, y, r, alpha`` arrays ``[objects, len(times)]`` of every object at ``times`` (linear motion)."""
    kf = _keyframes(spec)
    b = _boundaries(len(spec.events), seconds)
    t = np.asarray(times, dtype=np.float64)
    return {k: np.stack([np.interp(t, b, row) for row in getattr(kf, k)]) for k in ("x", "y", "r", "alpha")}


def reverse_scene(spec: SceneSpec) -> SceneSpec:
    """Return the time reverse of ``spec``: objects start where they ended, events reversed in reverse order."""
    kf = _keyframes(spec)
    objects = tuple(
        SynthObject(o.colour, o.shape, kf.size[i][-1], float(kf.x[i, -1]), float(kf.y[i, -1]), o.scale)
        for i, o in enumerate(spec.objects)
    )
    events = tuple(SynthEvent(e.obj, REVERSE[e.action], e.amount) for e in reversed(spec.events))
    return SceneSpec(objects, events)


def scene_key(spec: SceneSpec) -> tuple[tuple[str, str, str, str], ...]:
    """The meaning of a scene's caption: per event, in order, (colour, shape, size at the event's start, action)."""
    kf = _keyframes(spec)
    return tuple(
        (spec.objects[e.obj].colour, spec.objects[e.obj].shape, kf.size[e.obj][k], e.action)
        for k, e in enumerate(spec.events)
    )


# ------------------------------------------------------------------------------------------------------ captions


def describe(spec: SceneSpec, rng: np.random.Generator | None = None) -> str:
    """Return a caption of ``spec``: the canonical one without ``rng``, else a random paraphrase."""
    kf = _keyframes(spec)

    def pick(options: tuple[str, ...]) -> str:
        return options[0] if rng is None else options[int(rng.integers(len(options)))]

    seen: set[int] = set()
    clauses = []
    for k, e in enumerate(spec.events):
        o = spec.objects[e.obj]
        det = "the" if e.obj in seen else "a"
        seen.add(e.obj)
        size_word = pick(SIZE_WORDS[kf.size[e.obj][k]])
        clauses.append(f"{det} {size_word} {o.colour} {o.shape} {pick(ACTION_PHRASES[e.action])}")
    if len(clauses) == 1:
        return clauses[0]
    return pick(CONNECTORS).format(a=clauses[0], b=clauses[1])


def paraphrases(spec: SceneSpec, rng: np.random.Generator, count: int) -> list[str]:
    """Return up to ``count`` distinct captions of ``spec``, the canonical caption first."""
    out = [describe(spec)]
    for _ in range(count * 10):
        if len(out) >= count:
            break
        cap = describe(spec, rng)
        if cap not in out:
            out.append(cap)
    return out


_SIZE_OF_WORD = {w: s for s, words in SIZE_WORDS.items() for w in words}
_ACTION_OF_PHRASE = {p: a for a, phrases in ACTION_PHRASES.items() for p in phrases}
_CLAUSE = re.compile(
    r"^(?:a|the) (?P<size>{}) (?P<colour>{}) (?P<shape>{}) (?P<action>{})$".format(
        "|".join(_SIZE_OF_WORD), "|".join(COLOURS), "|".join(SHAPES),
        "|".join(sorted(map(re.escape, _ACTION_OF_PHRASE), key=len, reverse=True)),
    )
)
_SPLIT = re.compile(r", then | and then |, after that ")


def parse_caption(text: str) -> tuple[tuple[str, str, str, str], ...]:
    """Parse a synthetic video caption back into its :func:`scene_key`; raises ``ValueError`` if it is not one."""
    s = " ".join(text.lower().strip().rstrip(".").split())
    if s.startswith("first "):
        s = s[len("first "):]
    parts = _SPLIT.split(s)
    if len(parts) not in (1, 2):
        raise ValueError(f"not a synthetic caption: {text!r}")
    key = []
    for part in parts:
        m = _CLAUSE.match(part)
        if m is None:
            raise ValueError(f"not a synthetic caption: {text!r} (cannot read {part!r})")
        key.append((m["colour"], m["shape"], _SIZE_OF_WORD[m["size"]], _ACTION_OF_PHRASE[m["action"]]))
    return tuple(key)


# ----------------------------------------------------------------------------------------------------- rendering


def _sdf(shape: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (fractions of the frame) to a shape of radius ``r`` centred at the origin (y points down)."""
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy) - 1.2 * r) / np.sqrt(2.0)
    if shape == "triangle":  # pointing up, circumradius 1.2 r (its centroid is the centre)
        R = 1.2 * r
        s3 = np.sqrt(3.0) / 2.0
        return np.maximum(np.maximum(dy, s3 * dx - 0.5 * dy), -s3 * dx - 0.5 * dy) - 0.5 * R
    raise ValueError(f"unknown shape {shape!r}")


def render_scene(spec: SceneSpec, times: np.ndarray, size: int, seconds: float) -> np.ndarray:
    """Render ``spec`` at ``times`` (seconds) as uint8 frames ``[len(times), size, size, 3]`` (anti-aliased)."""
    state = scene_state(spec, times, seconds)
    n = len(np.atleast_1d(times))
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    img = np.empty((n, size, size, 3), dtype=np.float32)
    img[:] = np.asarray(BACKGROUND, dtype=np.float32)
    for i, o in enumerate(spec.objects):
        a = state["alpha"][i].astype(np.float32)
        if not np.any(a > 0):
            continue
        # Only the pixels the object can touch during the clip (its trajectory's bounding box) are computed.
        reach = 1.3 * float(state["r"][i].max()) + 2.0 / size
        c0, c1 = _span(state["x"][i], reach, size)
        r0, r1 = _span(state["y"][i], reach, size)
        dx = grid[None, None, c0:c1] - state["x"][i].astype(np.float32)[:, None, None]
        dy = grid[None, r0:r1, None] - state["y"][i].astype(np.float32)[:, None, None]
        r = state["r"][i].astype(np.float32)[:, None, None]
        cover = np.clip(0.5 - _sdf(o.shape, dx, dy, r) * size, 0.0, 1.0) * a[:, None, None]
        box = img[:, r0:r1, c0:c1]
        box += (np.asarray(COLOURS[o.colour], dtype=np.float32) - box) * cover[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _span(centres: np.ndarray, reach: float, size: int) -> tuple[int, int]:
    """Pixel range [lo, hi) covering ``centres ± reach`` (fractions of the frame), clipped to the frame."""
    lo = int(np.floor((float(centres.min()) - reach) * size))
    hi = int(np.ceil((float(centres.max()) + reach) * size))
    return max(lo, 0), min(hi, size)


# ------------------------------------------------------------------------------------------------ random scenes


def _valid_actions(actions: list[tuple[int, str]]) -> bool:
    """Check that a sequence of (object, action) is physically and linguistically sensible."""
    by_obj: dict[int, list[str]] = {}
    for obj, act in actions:
        by_obj.setdefault(obj, []).append(act)
    for acts in by_obj.values():
        if "appear" in acts[1:] or "disappear" in acts[:-1]:
            return False  # appear only while invisible (first), nothing after disappearing
        for a, b in zip(acts, acts[1:], strict=False):
            if b == a or b == REVERSE[a]:
                return False  # no repeats, no undoing the previous event
        sizes = [a for a in acts if a in ("grow", "shrink")]
        if len(sizes) > 1:
            return False
    return True


def random_scene(rng: np.random.Generator, seconds: float, distractors: float = 0.0) -> SceneSpec:
    """Draw a random valid scene: 1 event (25%), 1 object with 2 events (25%), 2 objects with 1 event each (50%);
    with probability ``distractors``, one more object that does nothing (see :func:`_add_distractor`). A draw that
    cannot be placed without overlap is drawn again, coin included, and three objects fail more often than two: at
    0.5, 38 % of the demo's test scenes and 41 % of its training scenes have a distractor."""
    while True:
        kind = int(rng.choice(3, p=[0.25, 0.25, 0.5]))
        n_obj = 2 if kind == 2 else 1
        owners = [0] if kind == 0 else ([0, 0] if kind == 1 else [0, 1])
        actions = [(o, ACTIONS[int(rng.integers(len(ACTIONS)))]) for o in owners]
        if not _valid_actions(actions):
            continue
        looks = set()
        while len(looks) < n_obj:
            looks.add((list(COLOURS)[int(rng.integers(len(COLOURS)))], SHAPES[int(rng.integers(len(SHAPES)))]))
        looks_list = sorted(looks, key=lambda cs: (list(COLOURS).index(cs[0]), SHAPES.index(cs[1])))
        rng.shuffle(looks_list)
        objects = []
        for i in range(n_obj):
            resize = next((a for o, a in actions if o == i and a in ("grow", "shrink")), None)
            if resize is None:
                size = ("small", "big")[int(rng.integers(2))]
            else:
                size = "small" if resize == "grow" else "big"
            objects.append(SynthObject(looks_list[i][0], looks_list[i][1], size, 0.5, 0.5,
                                       float(np.round(rng.uniform(*SCALE_RANGE), 3))))
        events = tuple(
            SynthEvent(o, a, float(np.round(rng.uniform(*MOVE_RANGE), 3)) if a in MOVES else 0.0) for o, a in actions
        )
        if distractors > 0.0 and rng.random() < distractors:
            objects.append(_add_distractor(rng, objects))
        spec = _place(SceneSpec(tuple(objects), events), rng, seconds)
        if spec is not None and scene_key(reverse_scene(spec)) != scene_key(spec):
            return spec


def distinct_scene_keys() -> int:
    """Return how many distinct scene keys (:func:`scene_key`, a caption's meaning) :func:`random_scene` can draw at
    most, counted from its choices: one object with one event, one object with two, or two objects with one each;
    the looks (colour, shape, two objects never alike), each event's action and each object's starting size (set by
    a grow or shrink) fix the key. An upper bound: a few of these scenes cannot be placed in the frame."""
    looks = len(COLOURS) * len(SHAPES)

    def sizes(actions: tuple[str, ...]) -> int:  # starting sizes of an object doing ``actions``
        return 1 if any(a in ("grow", "shrink") for a in actions) else 2

    one_event = looks * sum(sizes((a,)) for a in ACTIONS)
    two_events = looks * sum(sizes((a, b)) for a in ACTIONS for b in ACTIONS if _valid_actions([(0, a), (0, b)]))
    two_objects = looks * (looks - 1) * sum(sizes((a,)) * sizes((b,)) for a in ACTIONS for b in ACTIONS)
    return one_event + two_events + two_objects


def _add_distractor(rng: np.random.Generator, objects: list[SynthObject]) -> SynthObject:
    """A static object in a colour no other object of the scene has: it owns no event, so no caption names it.

    Real captions name what happens, not everything in view. A distractor is what tells query-conditioned patch
    selection apart from selection by the frame's own saliency: the caption says which object to look at, the frame
    alone does not. A distinct colour keeps every caption's objects unambiguous; being static and always visible, a
    distractor never satisfies any caption, so the captions still identify their video (the oracle stays at 100).
    """
    taken = {o.colour for o in objects}
    colours = [c for c in COLOURS if c not in taken]
    return SynthObject(colours[int(rng.integers(len(colours)))], SHAPES[int(rng.integers(len(SHAPES)))],
                       ("small", "big")[int(rng.integers(2))], 0.5, 0.5,
                       float(np.round(rng.uniform(*SCALE_RANGE), 3)))


def _place(spec: SceneSpec, rng: np.random.Generator, seconds: float, tries: int = 60) -> SceneSpec | None:
    """Choose start positions so every object stays inside the frame and visible objects never overlap."""
    kf = _keyframes(spec)
    times = np.linspace(0.0, seconds - 1.0, 45)
    for _ in range(tries):
        objects = []
        for i, o in enumerate(spec.objects):
            margin = float(kf.r[i].max()) + EDGE
            ox, oy = kf.x[i] - kf.x[i, 0], kf.y[i] - kf.y[i, 0]
            lo_x, hi_x = margin - ox.min(), 1.0 - margin - ox.max()
            lo_y, hi_y = margin - oy.min(), 1.0 - margin - oy.max()
            if lo_x > hi_x or lo_y > hi_y:
                return None
            x, y = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
            objects.append(SynthObject(o.colour, o.shape, o.size, float(np.round(x, 4)), float(np.round(y, 4)),
                                       o.scale))
        placed = SceneSpec(tuple(objects), spec.events)
        if len(objects) == 1 or _apart(scene_state(placed, times, seconds)):
            return placed
    return None


def _apart(st: dict[str, np.ndarray]) -> bool:
    """Whether every two objects stay apart whenever both are visible (``st`` from :func:`scene_state`)."""
    n = len(st["x"])
    for i in range(n):
        for j in range(i + 1, n):
            both = (st["alpha"][i] > 0) & (st["alpha"][j] > 0)
            dist = np.hypot(st["x"][i] - st["x"][j], st["y"][i] - st["y"][j])
            if not np.all(dist[both] > 1.2 * (st["r"][i] + st["r"][j])[both] + EDGE):
                return False
    return True
