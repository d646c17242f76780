"""Real preprocessed inputs for engine validation: rendered synthetic scenes and their captions.

Frames are drawn by the synthetic dataset's renderer (moving coloured shapes, 96 px), sampled at the model's frame
count and passed through the project's one preprocessing function (bicubic resize, center crop, CLIP mean/std);
captions are the scenes' own descriptions tokenised with the model's tokenizer. One video is padded (fewer real
frames than ``T``) so the frame-mask path is exercised too. Deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rap_deploy.config import RAPConfig

_SCENES = (
    # (colour, shape, size, x, y, action, amount), one event each, plus two-object scenes below
    ("red", "circle", "small", 0.7, 0.5, "left", 0.4),
    ("blue", "square", "big", 0.3, 0.6, "right", 0.38),
    ("yellow", "triangle", "small", 0.5, 0.3, "grow", 0.0),
    ("green", "diamond", "big", 0.5, 0.7, "up", 0.36),
)


@dataclass
class SampleInputs:
    """Preprocessed model inputs: ``frames [B,T,3,S,S]`` f32, ``frame_mask [B,T]`` f32, ``input_ids [N,L]`` i32,
    ``eot [N]`` i32 and the ``captions`` they came from."""

    frames: np.ndarray
    frame_mask: np.ndarray
    input_ids: np.ndarray
    eot: np.ndarray
    captions: list[str]


def sample_inputs(config: RAPConfig, videos: int = 3, seconds: float = 12.0) -> SampleInputs:
    """Render ``videos`` scenes (at most 4) at the model's frame count and preprocess them; see the module docstring.

    The last video keeps only half its frames (the rest padded with zeros and masked out).
    """
    from rap_deploy.data.synth import SceneSpec, SynthEvent, SynthObject, describe, render_scene
    from rap_deploy.preprocess import preprocess_frames
    from rap_deploy.tokenizer import tokenize

    t = config.frames
    frames, masks, captions = [], [], []
    for i, (colour, shape, size, x, y, action, amount) in enumerate(_SCENES[:max(1, min(videos, len(_SCENES)))]):
        spec = SceneSpec((SynthObject(colour, shape, size, x, y),), (SynthEvent(0, action, amount),))
        times = np.linspace(0.0, seconds - 1.0, t)
        raw = render_scene(spec, times, 96, seconds)
        valid = t if i < videos - 1 or videos == 1 else max(1, t // 2)
        clip = preprocess_frames(raw[:valid], config.preprocess).numpy()
        padded = np.zeros((t, *clip.shape[1:]), dtype=np.float32)
        padded[:valid] = clip
        mask = np.zeros(t, dtype=np.float32)
        mask[:valid] = 1.0
        frames.append(padded)
        masks.append(mask)
        captions.append(describe(spec))
    captions.append("a white square shrinks, then a purple circle appears")
    ids, eot = tokenize(captions, config.tokenizer)
    return SampleInputs(np.stack(frames), np.stack(masks), ids, eot, captions)
