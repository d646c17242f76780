"""The remote engine's HTTP side: the engine URL, and ``tritonclient.http`` answers read within size bounds.

``tritonclient`` reads every answer body at once, whatever its size; :class:`BoundedTransport` wraps the HTTP
connection of a client so that each answer is read in pieces and refused past its bound (:data:`MAX_METADATA_ANSWER`,
or what :class:`~rap_deploy.engines.serving.remote.RemoteEngine` sets for one inference request).

``tritonclient`` 2.73.0 offers no public way to do this: its constructor takes no transport and no size limit, a
plugin sees only a request's headers, and every client method reads the answer itself (its public
``generate_request_body`` / ``parse_response_body`` would mean replacing its HTTP client). So :func:`bound_answers`
replaces the client's private ``_client_stub``, checking that it has the shape of :data:`CHECKED_TRITONCLIENT`'s;
a client of another shape is refused (:func:`unsupported_client`) rather than left reading without a bound.
"""

from __future__ import annotations

import io
import re
import urllib.parse
from importlib import metadata
from typing import Any

from rap_deploy.errors import BackendUnavailableError, UsageError

NOT_OIP = "is it a KServe v2 / Open Inference Protocol server (`rapdeploy serve`, Triton)? Check the URL"
#: The largest answer to a request other than inference (health, server and model metadata, model configuration).
MAX_METADATA_ANSWER = 16 << 20
#: Room an inference answer may take beyond its outputs' binary data (the JSON header; a small output a server sends
#: as JSON numbers though binary data were asked for).
ANSWER_MARGIN = 1 << 20
_READ_PIECE = 1 << 20  # answers are read in pieces of this size, counted against their bound
#: The ``tritonclient`` versions whose ``InferenceServerClient`` was checked to send every request through
#: ``_client_stub`` (a geventhttpclient ``HTTPClient``) and read its answers as :class:`BoundedAnswer` serves them:
#: the version ``pyproject.toml`` pins, which the remote-engine tests run.
CHECKED_TRITONCLIENT = ("2.73.0",)
_STUB_METHODS = ("get", "post", "close")  # what the client calls on _client_stub
_ANSWER_METHODS = ("get", "read", "release")  # what BoundedAnswer calls on an answer (with status_code)


def split_url(url: str) -> tuple[str, bool]:
    """``(host:port[/base path], ssl)`` for ``tritonclient.http`` from ``http(s)://HOST:PORT[/path]``; raises
    :class:`UsageError` for anything else."""
    shown = redact_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # an unbalanced IPv6 bracket ("http://[::1")
        raise UsageError(f"engine URL {shown!r} is not a URL ({exc}); it must look like http://HOST:PORT") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise UsageError(f"engine URL {shown!r} must look like http://HOST:PORT")
    if "@" in parts.netloc:
        raise UsageError(f"engine URL {shown!r} carries credentials (USER:PASSWORD@), which rapdeploy does not send "
                         "(the server would see none) and would repeat in its messages; pass http://HOST:PORT of a "
                         "server that needs none, or reach it through a gateway that adds them")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise UsageError(f"engine URL {shown!r} has an invalid port") from None
    return parts.netloc + parts.path.rstrip("/"), parts.scheme == "https"


def redact_url(url: str) -> str:
    """``url`` with any ``USER:PASSWORD@`` before its host replaced by ``***@``, for messages."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@", r"\1***@", str(url))


def one_line(text: Any, limit: int = 300) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit] + "…"


def tritonclient_version() -> str:
    """The installed ``tritonclient``'s version, ``"(version unknown)"`` when its distribution has none."""
    try:
        return metadata.version("tritonclient")
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def unsupported_client(where: str, how: str) -> BackendUnavailableError:
    """The one-line error (exit 2) for a ``tritonclient`` whose HTTP connection is not where or what
    :func:`bound_answers` expects: ``how`` it differs, the version found and the versions checked."""
    checked = ", ".join(CHECKED_TRITONCLIENT)
    return BackendUnavailableError(
        f"{where}: tritonclient {tritonclient_version()} {how}, so rapdeploy cannot read the server's answers within "
        f"a size bound (checked with tritonclient {checked}); install that version "
        f"(pip install 'tritonclient[http]=={CHECKED_TRITONCLIENT[-1]}')")


def _has_methods(value: Any, names: tuple[str, ...]) -> bool:
    return all(callable(getattr(value, name, None)) for name in names)


class BoundedAnswer:
    """An HTTP answer read whole, in pieces, refused as soon as it passes ``limit`` bytes; what ``tritonclient``
    reads of an answer (``status_code``, ``get(header)``, ``read([length])``), served from memory.

    ``tritonclient`` reads every answer body at once, whatever its size: a server (or something else listening
    there) could make the client allocate without limit, and ``read(length=…)`` with the ``Inference-Header-Content-
    Length`` it declares asked the socket for that many bytes in one buffer. Raises :class:`UsageError` naming
    ``where``, the size and the bound; the connection is then closed, its rest unread.
    """

    def __init__(self, response: Any, limit: int, where: str) -> None:
        if not _has_methods(response, _ANSWER_METHODS) or not hasattr(response, "status_code"):
            raise unsupported_client(where, f"answered with a {type(response).__name__[:40]}, not an HTTP answer "
                                            "with status_code, get, read and release")
        self._response = response
        try:
            self._body = io.BytesIO(self._read(limit, where))
        except BaseException:
            response.release()  # an incomplete answer: geventhttpclient closes its connection
            raise

    def _read(self, limit: int, where: str) -> bytes:
        encoding = str(self._response.get("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":  # tritonclient would inflate it whole; it was not asked for (no Accept-Encoding)
            raise UsageError(f"{where}: the answer is compressed ({encoding[:20]}), which rapdeploy did not ask for "
                             f"and does not read; {NOT_OIP}")
        declared = str(self._response.get("Content-Length") or "")
        if declared.isdigit() and int(declared) > limit:
            raise UsageError(f"{where}: the answer declares {int(declared):,} bytes, more than the {limit:,} its "
                             f"request can take; the server does not answer as the protocol does ({NOT_OIP})")
        pieces, total = [], 0
        while piece := self._response.read(_READ_PIECE):
            total += len(piece)
            if total > limit:
                raise UsageError(f"{where}: the answer passed {limit:,} bytes, the most its request can take; the "
                                 f"server does not answer as the protocol does ({NOT_OIP})")
            pieces.append(piece)
        return b"".join(pieces)

    @property
    def status_code(self) -> int:
        return self._response.status_code

    def get(self, name: str, default: Any = None) -> Any:
        """Header ``name`` (case-insensitive), ``default`` when absent."""
        return self._response.get(name, default)

    def read(self, length: int | None = -1) -> bytes:
        """The next ``length`` bytes of the body (all that is left for ``None`` or a negative length)."""
        return self._body.read(-1 if length is None or length < 0 else length)


class BoundedTransport:
    """``tritonclient``'s HTTP connection (a geventhttpclient ``HTTPClient``) whose answers are
    :class:`BoundedAnswer` s of at most ``limit`` bytes (:data:`MAX_METADATA_ANSWER` unless a caller sets it for one
    request: each thread has its own client, and so its own transport)."""

    def __init__(self, stub: Any, where: str) -> None:
        self._stub, self._where = stub, where
        self.limit = MAX_METADATA_ANSWER
        self.answers = 0  # answers read through this transport: a request that reads none went around it

    def get(self, request_uri: str, *args: Any, **kwargs: Any) -> BoundedAnswer:
        self.answers += 1
        return BoundedAnswer(self._stub.get(request_uri, *args, **kwargs), self.limit,
                             f"{self._where} GET {str(request_uri)[:80]}")

    def post(self, request_uri: str, *args: Any, **kwargs: Any) -> BoundedAnswer:
        self.answers += 1
        return BoundedAnswer(self._stub.post(request_uri, *args, **kwargs), self.limit,
                             f"{self._where} POST {str(request_uri)[:80]}")

    def __getattr__(self, name: str) -> Any:  # close() and the rest
        return getattr(self._stub, name)


def bound_answers(client: Any, where: str) -> BoundedTransport:
    """Wrap the HTTP connection of ``client`` (a ``tritonclient.http.InferenceServerClient``) in a
    :class:`BoundedTransport` naming ``where`` (the server's URL) and return it.

    Raises :class:`BackendUnavailableError` (:func:`unsupported_client`) when the client keeps no connection with
    ``get``, ``post`` and ``close`` in ``_client_stub``, where :data:`CHECKED_TRITONCLIENT` keep it: another
    ``tritonclient`` version, whose answers would otherwise be read without a bound or fail as an AttributeError.
    """
    stub = getattr(client, "_client_stub", None)
    if stub is None or not _has_methods(stub, _STUB_METHODS):
        found = "none" if stub is None else type(stub).__name__[:40]
        raise unsupported_client(where, f"keeps no HTTP connection with get, post and close in "
                                        f"InferenceServerClient._client_stub (found {found})")
    transport = client._client_stub = BoundedTransport(stub, where)
    return transport


def bounded_transport(client: Any, where: str) -> BoundedTransport:
    """The :class:`BoundedTransport` :func:`bound_answers` gave ``client``; :func:`unsupported_client` when the
    client has replaced it since."""
    transport = getattr(client, "_client_stub", None)
    if not isinstance(transport, BoundedTransport):
        raise unsupported_client(where, "replaced InferenceServerClient._client_stub after rapdeploy bounded it")
    return transport


def require_answer_read(transport: BoundedTransport, answers_before: int, where: str) -> None:
    """:func:`unsupported_client` when ``transport`` read no answer since it had read ``answers_before``: the
    client answered a request without its ``_client_stub``, so without a bound."""
    if transport.answers == answers_before:
        raise unsupported_client(where, "answered a request without going through InferenceServerClient._client_stub")
