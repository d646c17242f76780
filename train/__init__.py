"""The training stage (imported as ``rap_deploy.train``): losses, schedule, the training loop, distributed
data-parallel training, and pre-training of the offline default backbone.

Submodules are imported lazily by their users (``rap_deploy.train.loop``, ``rap_deploy.train.backbone``, ...), so
importing this package stays cheap.
"""
