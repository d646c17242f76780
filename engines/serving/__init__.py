"""Serving: ``rapdeploy serve`` (search + the Open Inference Protocol for the three graphs), the remote engine that
talks to such a server (or to Triton), and the Triton model repository generator (DESIGN.md §12).

Modules, one job each:

- :mod:`~rap_deploy.engines.serving.contract`: the served models — tensor names, datatypes, shapes and batch limits
  derived from the engine's manifest / :func:`~rap_deploy.export.export_config.graph_specs`, never hard-coded;
- :mod:`~rap_deploy.engines.serving.model_config`: a model's Triton ``ModelConfig`` (protobuf) and KServe metadata;
- :mod:`~rap_deploy.engines.serving.oip`: KServe v2 inference requests and responses (JSON and binary tensors);
- :mod:`~rap_deploy.engines.serving.batcher`: the dynamic batcher in front of the text encoder;
- :mod:`~rap_deploy.engines.serving.serial`: the engine wrapper that serialises engine calls;
- :mod:`~rap_deploy.engines.serving.service`: what the server does (inference, search, thumbnails, statistics);
- :mod:`~rap_deploy.engines.serving.app`: the FastAPI routes; :mod:`~rap_deploy.engines.serving.server`: running it;
- :mod:`~rap_deploy.engines.serving.middleware`: the app's ASGI middleware (security headers, ``Host`` and
  ``Origin`` checks, request counts, answers to requests cancelled at a stop) and its JSON error answers;
- :mod:`~rap_deploy.engines.serving.bodies`: the routes' bounded request bodies and paced responses;
- :mod:`~rap_deploy.engines.serving.remote`: ``load_engine("http://HOST:PORT")``, reading the server's answers within
  size bounds (:mod:`~rap_deploy.engines.serving.remote_transport`) and checking what it publishes against the
  contract (:mod:`~rap_deploy.engines.serving.remote_checks`);
- :mod:`~rap_deploy.engines.serving.triton_repo`: ``rapdeploy triton-repo``;
- :mod:`~rap_deploy.engines.serving.loadtest` and :mod:`~rap_deploy.engines.serving.page_check`: scripts
  (``python -m ...``), the loopback load test and the headless-Chromium check of the search page.

Nothing heavy is imported here.
"""
