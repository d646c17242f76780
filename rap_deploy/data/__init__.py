"""Datasets (CLIP4Clip formats), video decoding, the decoded-frame cache, data checks and the synthetic dataset.

Import the submodules directly (``rap_deploy.data.datasets``, ``.video``, ``.cache``, ``.check``, ``.synth``); this
package does not import them eagerly so that light users (the CLI's ``--help``) stay fast.
"""

# The dataset formats the readers take (rap_deploy.data.datasets), here so that the CLI's help needs no torch.
DATASETS = ("msrvtt", "msvd", "didemo", "activitynet")
DATASET_NAMES = ", ".join(DATASETS)
# The dataset whose layout the synthetic set has, which the demo, the README's examples and bench's and export's
# --dataset default to: its verify reports keep the folder names they had before reports of other datasets were told
# apart (engines.report_labels.report_folder_name).
DEFAULT_DATASET = "msrvtt"

# The synthetic world's default share of videos and stills with a distractor, an object no caption names
# (:func:`rap_deploy.data.synth._add_distractor`): none, see the distractor experiment in
# docs/ablation-history.md for why. It lives here, not in ``synth``, so that the CLI's option defaults need no numpy.
SYNTH_DISTRACTORS = 0.0
