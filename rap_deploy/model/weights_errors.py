"""Why a backbone's weights do not load, said in one line with the fix: a weights file that does not fit the model
(the keys and shapes that differ, the packaged model it fits, the prefix it nests the model under), a TorchScript
archive (the conversion command), torch's ``load_state_dict`` errors read back into whole key names.

:mod:`rap_deploy.model.clip_loader` raises these; the checkpoint loader reuses :func:`key_mismatch` and
:func:`state_dict_mismatch` for a checkpoint's embedded weights.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from rap_deploy.bounded_names import bounded_file_name
from rap_deploy.errors import UsageError
from rap_deploy.name_lists import some_names


def torchscript_refusal(path: Path, clip: str) -> str:
    """The refusal of the TorchScript weights file ``path`` (OpenAI's ``ViT-B-32.pt``) given for ``clip``: the
    state-dict file open_clip publishes, or the one-line conversion of this one (its tensors, without the three
    plain numbers OpenAI's archive also holds and the constant causal mask a traced open_clip model keeps), and the
    QuickGELU model its weights need where open_clip has one."""
    import shlex

    import open_clip

    converted = path.with_name(bounded_file_name(path.stem, ".state_dict.pt"))  # at most 255 bytes
    quick = f"{clip}-quickgelu"
    model = f" with --clip {quick} (OpenAI's weights need QuickGELU)" if quick in open_clip.list_models() else ""
    return (f"backbone weights file {path} is a TorchScript archive (OpenAI's original CLIP release format), which "
            "rapdeploy does not load: loading it runs the code it holds; pass open_clip's state-dict file of the "
            "model (open_clip_pytorch_model.bin or .safetensors), or, if you trust this file, convert it once: "
            f"python -c \"import torch; sd = torch.jit.load({_double_quoted_literal(path)}, map_location='cpu')"
            ".state_dict(); [sd.pop(k) for k in ('input_resolution', 'context_length', 'vocab_size', 'attn_mask') "
            f"if k in sd]; torch.save(sd, {_double_quoted_literal(converted)})\" and pass --pretrained "
            f"{shlex.quote(str(converted))}{model}")


# Characters a path keeps as they are in _double_quoted_literal: none is special to Python in '...' or to a shell in
# "..." (where $, `, \\, " and ! are)
_PLAIN_PATH_CHARACTERS = frozenset("/._-+:,=@%~ ")


def _double_quoted_literal(path: str | Path) -> str:
    """A Python string literal of ``path`` in single quotes that reads as that path inside a shell's double quotes
    (``python -c "..."``): a character special to either (a quote, ``$``, a backtick, a backslash, ``!``) is a
    ``\\uXXXX`` escape, which the shell leaves as it is and Python turns back into the character."""
    def plain(c: str) -> str:
        if c.isalnum() or c in _PLAIN_PATH_CHARACTERS:
            return c
        return f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"

    return "'" + "".join(plain(c) for c in str(path)) + "'"


def weights_file_error(path: Path, clip: str, exc: BaseException) -> Exception:
    """The one-line error for open_clip failing to load the weights file ``path`` into ``clip`` with ``exc``.

    Weights that do not fit the architecture: :class:`UsageError` (pass the right ``--clip``). A file that cannot be
    read: what :func:`rap_deploy.file_kinds.explain_load_error` says (empty, truncated, pickled objects, not a weights
    file) or, for ``.safetensors``, a damaged-file :class:`~rap_deploy.errors.CheckFailedError`.
    """
    from rap_deploy.errors import CheckFailedError
    from rap_deploy.file_kinds import explain_load_error, sniff

    text = one_line(exc)
    # load_state_dict's size mismatches, and open_clip's own shape assertions (e.g. "pos_embed width changed!")
    if (isinstance(exc, RuntimeError) and "state_dict" in text) or isinstance(exc, AssertionError) or \
            (isinstance(exc, (RuntimeError, ValueError)) and ("size mismatch" in text or "shape" in text)) or \
            _raised_in(exc, ("resize_pos_embed", "resize_text_pos_embed")):
        mismatch = state_dict_mismatch(exc) if isinstance(exc, RuntimeError) else None
        shown, fits, prefix = _file_mismatch(path, clip)
        fix = f"pass --clip {fits}, the model they fit, or {clip}'s own weights" if fits else \
            _prefix_fix(path, clip, prefix) if prefix else \
            "pass that model's weights, or the --clip they were trained for"
        return UsageError(f"backbone weights file {path} does not fit open_clip model {clip} "
                          f"({mismatch or shown or f'{type(exc).__name__}: {text}'}); {fix}")
    if path.suffix == ".safetensors" or sniff(path) == "safetensors":
        return CheckFailedError(f"backbone weights file {path} is not a readable safetensors file of {clip} "
                                f"({type(exc).__name__}: {text}); it is truncated or damaged, copy it again")
    if isinstance(exc, (KeyError, StopIteration, AttributeError, TypeError)) and sniff(path) in ("zip", "pickle"):
        return UsageError(f"backbone weights file {path} holds no open_clip state dict ({type(exc).__name__}: "
                          f"{text}); pass the model's weights file")
    return explain_load_error(path, exc, what="backbone weights file", fix="download it again")


def _file_mismatch(path: Path, clip: str) -> tuple[str | None, str | None, str | None]:
    """How the weights file ``path`` differs from open_clip model ``clip`` (:func:`key_mismatch` of its tensor names
    and shapes, read without their data), the packaged model it fits instead, and the prefix under which it holds
    all of ``clip`` (:func:`~rap_deploy.model.weights_shapes.nesting_prefix`); ``None`` for what is not known.
    open_clip's own shape checks (an AssertionError: 'text pos_embed width changed!') name none."""
    from rap_deploy.model.clip_loader import PACKAGED_CONFIGS, quiet_loading_logs
    from rap_deploy.model.weights_shapes import (
        differences,
        file_shapes,
        fitting_clip,
        model_shapes,
        nesting_prefix,
        open_clip_names,
    )

    stored = file_shapes(path)
    shapes = open_clip_names(stored)
    if not shapes:
        return None, None, None
    packaged = [p.stem for p in sorted(PACKAGED_CONFIGS.glob("*.json")) if p.stem != clip]
    with quiet_loading_logs():  # open_clip's 'No pretrained weights loaded' for each model built
        model = model_shapes(clip)
        # the prefix as stored ('module.clip.', not open_clip's 'clip.'): the conversion command reads the file as is
        return (key_mismatch(*differences(shapes, model)) or None, fitting_clip(shapes, packaged),
                nesting_prefix(stored, model))


def _prefix_fix(path: Path, clip: str, prefix: str) -> str:
    """The fix for the weights file ``path`` that holds every tensor of ``clip`` under ``prefix`` (a larger model's
    checkpoint, CLIP4Clip's): the one-line command that saves them without the prefix beside it, and the file to
    pass then (named for the prefix, in file-name characters: a prefix is any text, ``encoder/clip.`` too)."""
    import shlex

    tag = re.sub(r"[^0-9A-Za-z._-]+", "_", prefix.strip("."))[:40] or "inner"
    converted = path.with_name(bounded_file_name(path.name, f".{tag}.pt"))
    return (f"the file holds every tensor of {clip} under the prefix {prefix!r} (a checkpoint of a model built on "
            f"CLIP, as CLIP4Clip's pytorch_model.bin is); save them without it once: python -c \"import torch; sd = "
            f"torch.load({_double_quoted_literal(path)}, map_location='cpu', weights_only=True); sd = "
            f"sd.get('state_dict', sd); torch.save({{k[{len(prefix)}:]: v for k, v in sd.items() if "
            f"k.startswith({_double_quoted_literal(prefix)})}}, {_double_quoted_literal(converted)})\" and pass "
            f"--pretrained {shlex.quote(str(converted))}")


_STATE_DICT_ERROR = "Error(s) in loading state_dict"
_MISSING = "Missing key(s) in state_dict: "
_UNEXPECTED = "Unexpected key(s) in state_dict: "
_SHAPE = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from checkpoint, "
                    r"the shape in current model is torch\.Size\((\[[^\]]*\])\)")


def one_line(exc: BaseException, limit: int = 240) -> str:
    """``exc``'s message on one line, at most ``limit`` characters: cut at a space, so no key or path is shown in
    part, with "… (N more characters)" saying how much was left out."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if len(text) <= limit:
        return text
    head = text[:limit + 1].rsplit(" ", 1)[0] if " " in text[:limit + 1] else text[:limit]
    return f"{head} … ({len(text) - len(head)} more characters)"


def count_noun(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: "1 key", "3 keys"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def key_mismatch(missing: Sequence[str], unexpected: Sequence[str], shapes: Sequence[tuple[str, str, str]]) -> str:
    """How a state dict does not fit a model, in whole key names ("and N more" past
    :data:`rap_deploy.name_lists.NAMES_SHOWN`): the model's keys it lacks (``missing``), the keys the model does
    not have (``unexpected``) and the tensors of another shape (``shapes``: name, shape in the file, shape in the
    model), joined by "; "."""
    parts = []
    if missing:
        parts.append(f"the weights lack {len(missing)} of the model's keys: {some_names(missing)}")
    if unexpected:
        parts.append(f"{'they hold ' if parts else 'the weights hold '}{count_noun(len(unexpected), 'key')} the model "
                     f"does not have: {some_names(unexpected)}")
    if shapes:
        shown = [f"{name} is {file} in the file, {model} in the model" for name, file, model in shapes]
        parts.append(f"{'they hold ' if parts else 'the weights hold '}{count_noun(len(shapes), 'tensor')} of another "
                     f"shape: {some_names(shown, 3)}")
    return "; ".join(parts)


def state_dict_error_keys(exc: BaseException
                          ) -> tuple[list[str], list[str], list[tuple[str, str, str]]] | None:
    """The keys torch's ``load_state_dict`` error ``exc`` lists, as :func:`key_mismatch` takes them (missing,
    unexpected, tensors of another shape), or ``None`` when ``exc`` is not such an error."""
    text = str(exc)
    if not text.startswith(_STATE_DICT_ERROR):
        return None
    missing: list[str] = []
    unexpected: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(_MISSING):
            missing += re.findall(r'"([^"]*)"', line[len(_MISSING):])
        elif line.startswith(_UNEXPECTED):
            unexpected += re.findall(r'"([^"]*)"', line[len(_UNEXPECTED):])
    return missing, unexpected, [(m[1], m[2], m[3]) for m in _SHAPE.finditer(text)]


def state_dict_mismatch(exc: BaseException) -> str | None:
    """:func:`key_mismatch` for torch's ``load_state_dict`` error ``exc`` (whose message lists every key, and would be
    cut mid-name), or ``None`` when ``exc`` is not such an error or names no key."""
    keys = state_dict_error_keys(exc)
    return (key_mismatch(*keys) or None) if keys is not None else None


def _raised_in(exc: BaseException, functions: tuple[str, ...]) -> bool:
    """Whether ``exc`` was raised inside one of ``functions`` (or a call they made): open_clip's resizing of a read
    state dict's position embeddings fails with torch's own shape errors ('Sizes of tensors must match')."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name in functions:
            return True
        tb = tb.tb_next
    return False
