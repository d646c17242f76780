"""The security headers every response of ``rapdeploy serve`` carries: the app's (``SecureHeaders`` in
:mod:`~rap_deploy.engines.serving.middleware`) and the refusals :mod:`~rap_deploy.engines.serving.connections` writes on
the socket itself (503 past ``--max-connections``, 408 past ``--header-timeout``, 400 for a request that is not
HTTP). One set, kept here.

No MIME sniffing (a JSON error echoing a video id that holds HTML is never read as a page), no framing
(clickjacking), no referrer; a response that is not the page runs nothing; no page of another origin may embed a
response (an ``<img>`` of ``/thumbnails?video_id=…`` loading or not told it whether the user's library holds that
video).
"""

from __future__ import annotations

SECURE_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "no-referrer",
                  "cross-origin-resource-policy": "same-origin",
                  "content-security-policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
                                             "form-action 'none'"}
