"""Datasets (CLIP4Clip formats), video decoding, the decoded-frame cache, data checks and the synthetic dataset.

Import the submodules directly (``rap_deploy.data.datasets``, ``.video``, ``.cache``, ``.check``, ``.synth``); this
package does not import them eagerly so that light users (the CLI's ``--help``) stay fast.
"""
