"""The RAP model on open_clip: backbone loading, LoRM, ASA and the assembled retrieval model."""

from rap_deploy.model.asa import AsynchronousSelfAttention, trilinear_warp
from rap_deploy.model.clip_loader import BackboneSpec, load_clip
from rap_deploy.model.lorm import LowRankModulation
from rap_deploy.model.rap import RAPModel

__all__ = [
    "AsynchronousSelfAttention",
    "BackboneSpec",
    "LowRankModulation",
    "RAPModel",
    "load_clip",
    "trilinear_warp",
]
