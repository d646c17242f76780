"""Text-only caption pairs of the synthetic world, for the language objective of the offline backbone's text tower.

RAP keeps the text encoder frozen, so whatever a caption's words mean must already be in it, as it is in real CLIP's
text tower. A tower trained only on still captions never sees motion words and maps "a red circle moves to the left,
then a blue square appears" and its time reverse "... moves to the right, then ... disappears" to the same embedding
(measured: cosine 1.000), which makes a video and its time reverse indistinguishable for any visual adapter. This
module draws scene descriptions (objects, actions, order) and two paraphrases of each, grouped with hard variants
(the time reverse, one action changed, the events swapped), so a text-text contrastive loss teaches the text tower
that paraphrases agree and that actions and order matter. No image is involved: the vision tower still learns from
still frames only, so temporal visual understanding still has to come from RAP.
"""

from __future__ import annotations

import numpy as np

from rap_deploy.data.synth import (
    ACTIONS,
    COLOURS,
    SHAPES,
    SceneSpec,
    SynthEvent,
    SynthObject,
    describe,
    reverse_scene,
    scene_key,
)


def random_text_scene(rng: np.random.Generator) -> SceneSpec:
    """A random scene for its caption only: one or two objects, one or two events (positions are irrelevant)."""
    n_obj = 1 + int(rng.integers(2))
    looks: list[tuple[str, str]] = []
    while len(looks) < n_obj:
        look = (list(COLOURS)[int(rng.integers(len(COLOURS)))], SHAPES[int(rng.integers(len(SHAPES)))])
        if look not in looks:
            looks.append(look)
    sizes = [("small", "big")[int(rng.integers(2))] for _ in looks]
    owners = [0] if n_obj == 1 and rng.random() < 0.5 else ([0, 0] if n_obj == 1 else [0, 1])
    events: list[SynthEvent] = []
    for obj in owners:
        choices = [a for a in ACTIONS if not events or events[-1].obj != obj or events[-1].action != a]
        events.append(SynthEvent(obj, choices[int(rng.integers(len(choices)))], 0.4))
    for i in range(n_obj):  # an object that grows starts small, one that shrinks starts big
        first = next((e.action for e in events if e.obj == i and e.action in ("grow", "shrink")), None)
        sizes[i] = {"grow": "small", "shrink": "big"}.get(first, sizes[i])
    objects = tuple(SynthObject(c, s, size, 0.5, 0.5) for (c, s), size in zip(looks, sizes, strict=True))
    return SceneSpec(objects, tuple(events))


def _variants(spec: SceneSpec, rng: np.random.Generator) -> list[SceneSpec]:
    """The scene, its time reverse, the scene with one action changed, and (two events) the events swapped."""
    out = [spec, reverse_scene(spec)]
    k = int(rng.integers(len(spec.events)))
    others = [a for a in ACTIONS if a != spec.events[k].action]
    changed = list(spec.events)
    changed[k] = SynthEvent(changed[k].obj, others[int(rng.integers(len(others)))], changed[k].amount)
    out.append(SceneSpec(spec.objects, tuple(changed)))
    if len(spec.events) == 2:
        out.append(SceneSpec(spec.objects, tuple(reversed(spec.events))))
    return out


def caption_pair_batch(rng: np.random.Generator, size: int) -> tuple[list[str], list[str], np.ndarray]:
    """``size`` scenes (random scenes and their hard variants) as two paraphrase lists and meaning ids.

    Returns ``(captions_a, captions_b, ids)``: ``captions_a[i]`` and ``captions_b[i]`` describe scene ``i`` in
    (usually) different words; ``ids[i] == ids[j]`` when scenes ``i`` and ``j`` mean the same (they are then not
    negatives of each other).
    """
    scenes: list[SceneSpec] = []
    while len(scenes) < size:
        scenes.extend(_variants(random_text_scene(rng), rng))
    scenes = scenes[:size]
    keys: dict[tuple, int] = {}
    ids = np.asarray([keys.setdefault(scene_key(s), len(keys)) for s in scenes], dtype=np.int64)
    return [describe(s, rng) for s in scenes], [describe(s, rng) for s in scenes], ids


def reverse_caption_probe(seed: int, n: int = 64) -> tuple[list[str], list[str], list[str]]:
    """For ``n`` random scenes (those that differ from their time reverse): the canonical caption, a random
    paraphrase, and the canonical caption of the time reverse (for the held-out text check)."""
    rng = np.random.default_rng([seed, 11])
    scenes = [random_text_scene(rng) for _ in range(n)]
    scenes = [s for s in scenes if scene_key(s) != scene_key(reverse_scene(s))]
    reverses = [describe(reverse_scene(s)) for s in scenes]
    return [describe(s) for s in scenes], [describe(s, rng) for s in scenes], reverses
