"""``python -m rap_deploy.cli`` (used by ``torchrun -m rap_deploy.cli train ...``)."""

from rap_deploy.cli import main

main()
