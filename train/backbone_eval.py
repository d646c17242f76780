"""Held-out measurements of the pre-trained backbone (:mod:`rap_deploy.train.backbone`): meaning-level
retrieval, attribute accuracy, patch-object precision and how well the text tower tells a caption from its
time reverse.

Held-out evaluation. Still captions repeat (the same colour/shape/size/position can be drawn twice, and "little" /
"small" or a leading "there is" are paraphrases), so caption-level R@1 with one "right" answer would punish the model
for ties the data itself creates. Retrieval is therefore scored by meaning: a caption is parsed into its set of
(size, colour, shape, position) objects, and every candidate with the same meaning counts as correct (rank = 1 + the
number of wrong candidates scoring strictly higher than the best correct one). Image→text ranks the distinct held-out
caption strings; text→image ranks the held-out images. Attribute accuracy (colour, shape, size, position) reads the
top-1 caption retrieved for each single-object image among the single-object captions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def still_meaning(caption: str) -> frozenset[tuple[str, str, str, str]]:
    """The meaning of a still caption: the set of ``(size, colour, shape, position)`` of its objects.

    Synonyms ("little"/"small", "large"/"big") and a leading "there is" do not change the meaning. Raises
    ``ValueError`` for a caption that is not a still caption.
    """
    from rap_deploy.data.synth import COLOURS, SHAPES, SIZE_WORDS
    from rap_deploy.data.synth_stills import POSITIONS

    size_of = {w: s for s, words in SIZE_WORDS.items() for w in words}
    positions = {p: f"{c},{r}" for (c, r), p in POSITIONS.items()}
    text = " ".join(caption.lower().strip().rstrip(".").split())
    text = text.removeprefix("there is ")
    objects = []
    for part in text.split(" and "):
        words = part.split(" ")
        if len(words) < 5 or words[0] != "a" or words[1] not in size_of or words[2] not in COLOURS \
                or words[3] not in SHAPES or " ".join(words[4:]) not in positions:
            raise ValueError(f"not a still caption: {caption!r}")
        objects.append((size_of[words[1]], words[2], words[3], positions[" ".join(words[4:])]))
    return frozenset(objects)


RANK_ROWS = 1024  # query rows ranked at a time: the boolean temporaries stay O(rows x candidates), never N x N


def _ranks(scores: np.ndarray, query_meaning: np.ndarray, candidate_meaning: np.ndarray) -> np.ndarray:
    """Per row of ``scores [queries, candidates]``: 1 + the number of wrong candidates scoring strictly above the
    best correct one, a candidate being correct when its meaning id equals the query's."""
    ranks = np.empty(len(scores), dtype=np.int64)
    for start in range(0, len(scores), RANK_ROWS):
        block = scores[start:start + RANK_ROWS]
        correct = query_meaning[start:start + RANK_ROWS, None] == candidate_meaning[None, :]
        best = np.where(correct, block, -np.inf).max(axis=1, keepdims=True)
        ranks[start:start + RANK_ROWS] = 1 + ((block > best) & ~correct).sum(axis=1)
    return ranks


def _recalls(ranks: np.ndarray) -> dict[str, float]:
    return {"R1": float(100 * np.mean(ranks <= 1)), "R5": float(100 * np.mean(ranks <= 5)),
            "R10": float(100 * np.mean(ranks <= 10)), "MnR": float(np.mean(ranks)), "queries": int(len(ranks))}


def heldout_score_bytes(n: int) -> int:
    """The memory :func:`heldout_metrics` needs for ``n`` held-out stills: the ``n x n`` float32 text-to-image score
    matrix and one block of rows' temporaries."""
    return 4 * n * n + 16 * RANK_ROWS * n


def heldout_metrics(image_emb: np.ndarray, text_emb: np.ndarray, captions: list[str]) -> dict[str, Any]:
    """Meaning-level retrieval between held-out images and captions (see the module docstring).

    ``image_emb [N,d]`` and ``text_emb [N,d]`` (L2-normalised) belong to ``captions`` (image i has caption i).
    Returns ``{"i2t": {R1,R5,R10,MnR}, "t2i": {...}, "attributes": {colour,shape,size,position (percent)}}``.
    Needs :func:`heldout_score_bytes` of memory (the meanings are compared as integer ids, a block of rows at a time).
    """
    meanings = [still_meaning(c) for c in captions]
    meaning_id: dict[frozenset, int] = {}
    ids = np.array([meaning_id.setdefault(m, len(meaning_id)) for m in meanings], dtype=np.int64)
    first: dict[str, int] = {}
    for i, caption in enumerate(captions):
        first.setdefault(caption, i)
    rows = list(first.values())  # the first image of every distinct caption, in order of appearance
    d_emb = text_emb[rows]
    d_mean = [meanings[i] for i in rows]
    i2t = _ranks(image_emb @ d_emb.T, ids, ids[rows])
    t2i = _ranks(text_emb @ image_emb.T, ids, ids)

    attrs, single_images = _attribute_accuracy(image_emb, d_emb, meanings, d_mean)
    return {"i2t": _recalls(i2t), "t2i": _recalls(t2i), "attributes": attrs,
            "single_object_images": single_images, "distinct_captions": len(rows)}


def _attribute_accuracy(image_emb: np.ndarray, d_emb: np.ndarray, meanings: list[frozenset], d_mean: list[frozenset]
                        ) -> tuple[dict[str, float], int]:
    """Percent of the single-object images whose top-1 single-object caption names their size, colour, shape and
    position, and the number of such images."""
    single_imgs = [i for i, m in enumerate(meanings) if len(m) == 1]
    single_caps = [j for j, m in enumerate(d_mean) if len(m) == 1]
    attrs = {"size": 0, "colour": 0, "shape": 0, "position": 0}
    if single_imgs and single_caps:
        top = (image_emb[single_imgs] @ d_emb[single_caps].T).argmax(axis=1)
        for i, j in zip(single_imgs, top, strict=True):
            (truth,), (pred,) = meanings[i], d_mean[single_caps[j]]
            for k, name in enumerate(attrs):
                attrs[name] += int(truth[k] == pred[k])
        attrs = {k: 100.0 * v / len(single_imgs) for k, v in attrs.items()}
    return attrs, len(single_imgs)


def image_and_patches(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image embeddings ``[B,d]`` and patch tokens in the joint space ``[B,P,d]`` (``ln_post`` then
    the visual projection: exactly the ``patch_tokens`` RAP's ASA selects from)."""
    visual = model.visual
    visual.output_tokens = True
    try:
        pooled, tokens = visual(images)
    finally:
        visual.output_tokens = False
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    return F.normalize(pooled, dim=-1), F.normalize(tokens, dim=-1)


@torch.no_grad()
def encode_heldout(model, images: torch.Tensor, ids: torch.Tensor, cfg, batch: int = 256
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out image embeddings, patch tokens (joint space) and text embeddings, L2-normalised."""
    from rap_deploy.preprocess import normalize

    model.eval()
    img, patch, txt = [], [], []
    for i in range(0, len(images), batch):
        a, b = image_and_patches(model, normalize(images[i:i + batch], cfg))
        img.append(a)
        patch.append(b)
        txt.append(model.encode_text(ids[i:i + batch], normalize=True))
    return torch.cat(img).numpy(), torch.cat(patch).numpy(), torch.cat(txt).numpy()


def patch_object_precision(patch_emb: np.ndarray, text_emb: np.ndarray, on_object: np.ndarray,
                           k: int = 8) -> dict[str, float]:
    """How often the ``k`` patches most similar to an image's own caption show an object (what ASA's
    text-conditioned top-k selection needs). Returns ``{"precision": percent of selected patches on objects,
    "base_rate": percent of all patches on objects, "k": k}``."""
    scores = np.einsum("npd,nd->np", patch_emb, text_emb)
    top = np.argsort(-scores, axis=1)[:, :k]
    return {"precision": float(100 * np.take_along_axis(on_object, top, 1).mean()),
            "base_rate": float(100 * on_object.mean()), "k": k}


@torch.no_grad()
def reverse_caption_similarity(model: torch.nn.Module, tok, seed: int) -> dict[str, float]:
    """How well the text tower tells a video-style caption from the caption of its time reverse.

    Returns ``reverse_caption_cos`` (mean cosine of a caption and its reverse's caption; 1.0 = indistinguishable),
    ``paraphrase_cos`` (mean cosine of a caption and a paraphrase of it) and ``paraphrase_closer`` (percent of
    captions whose paraphrase is closer than the reverse's caption), over held-out random scenes.
    """
    from rap_deploy.tokenizer import tokenize
    from rap_deploy.train.captions import reverse_caption_probe

    captions, paraphrases, reverses = reverse_caption_probe(seed)

    def enc(texts: list[str]) -> torch.Tensor:
        return model.encode_text(torch.from_numpy(tokenize(texts, tok)[0]).long(), normalize=True)

    model.eval()
    a, p, r = enc(captions), enc(paraphrases), enc(reverses)
    cos_rev, cos_par = (a * r).sum(-1), (a * p).sum(-1)
    return {"reverse_caption_cos": float(cos_rev.mean()), "paraphrase_cos": float(cos_par.mean()),
            "paraphrase_closer": float(100 * (cos_par > cos_rev).float().mean()), "probes": len(captions)}
