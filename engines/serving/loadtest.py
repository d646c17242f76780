"""Load test of ``rapdeploy serve`` on loopback: N concurrent clients for S seconds, throughput, p50/p99, errors.

Targets: ``search`` (``POST /search`` with template captions or ``--queries FILE``) and ``text`` (``text_encoder``
inference over the Open Inference Protocol, one tokenised query per request). Each client is a thread with its own
keep-alive connection; a run is bounded by ``--seconds`` and ``--max-requests``. The server's own counters
(``GET /stats``) give the text encoder's side: texts encoded per second, mean batch, texts per engine-second.

Batched vs one-at-a-time text encoding: ``--baseline-url`` measures a second server started with ``--max-batch 1``,
or ``--spawn`` starts both servers itself (one after the other, so they never share the CPU)::

    python -m rap_deploy.engines.serving.loadtest --spawn --engine ENGINE --library LIB --clients 16 --seconds 60 \\
        --target search,text --out loadtest.json

Only loopback addresses are accepted. Exit code 1 when a request failed or ``--require-ratio`` is not met, 2 for
bad usage, 130 / 143 when Ctrl-C / SIGTERM stopped it (the servers ``--spawn`` started are stopped then too).
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

TARGETS = ("search", "text")
MAX_CLIENTS, MAX_SECONDS = 256, 600.0
STOP_JOIN_S = 10.0  # on Ctrl-C or SIGTERM, how long the clients' requests in flight may still take


class LoadTestError(Exception):
    """Bad usage (exit 2)."""


def require_loopback(url: str) -> tuple[str, int]:
    """``(host, port)`` of ``url``; raises :class:`LoadTestError` unless every address it resolves to is loopback."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise LoadTestError(f"--url must be http://HOST:PORT on loopback, got {url!r}")
    try:
        port = parts.port or 80
    except ValueError as exc:  # a port out of range or not a number
        raise LoadTestError(f"{url}: invalid port ({exc})") from None
    try:
        addrs = {info[4][0] for info in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)}
    except socket.gaierror as exc:
        raise LoadTestError(f"cannot resolve {parts.hostname}: {exc}") from None
    if not addrs or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs):
        raise LoadTestError(f"{url} resolves to {sorted(addrs)}: the load test only runs against loopback")
    return parts.hostname, port


def _get_json(host: str, port: int, path: str) -> Any:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise LoadTestError(f"cannot reach http://{host}:{port}{path} ({exc}); is the server running?") from None
        if resp.status != 200:
            raise LoadTestError(f"GET {path} answered {resp.status}: {body[:200]!r}")
        try:
            return json.loads(body)
        except ValueError:
            raise LoadTestError(f"GET {path} answered {body[:80]!r}, not JSON: is http://{host}:{port} a `rapdeploy "
                                "serve`?") from None
    finally:
        conn.close()


def _text_batcher(host: str, port: int) -> dict[str, Any]:
    """The text batcher's counters from ``GET /stats``; :class:`LoadTestError` when the server has none (it is not
    a ``rapdeploy serve``)."""
    stats = _get_json(host, port, "/stats")
    counters = stats.get("text_batcher") if isinstance(stats, dict) else None
    keys = ("rows", "batches", "engine_seconds", "max_batch")
    if not isinstance(counters, dict) or not all(isinstance(counters.get(k), (int, float)) for k in keys):
        raise LoadTestError(f"GET /stats of http://{host}:{port} has no text_batcher counters: is it a `rapdeploy "
                            "serve`?")
    return counters


def request_bodies(target: str, host: str, port: int, queries: list[str], top_k: int, top_m: int
                   ) -> tuple[str, list[bytes]]:
    """The path and a pool of request bodies for ``target`` (text: tokenised with the server's model config)."""
    if target == "search":
        return "/search", [json.dumps({"query": q, "top_k": top_k, "top_m": top_m}).encode() for q in queries]
    from rap_deploy.config import RAPConfig
    from rap_deploy.engines.serving.model_config import read_parameters
    from rap_deploy.tokenizer import tokenize

    doc = _get_json(host, port, "/v2/models/text_encoder/config")
    params = read_parameters(doc) if isinstance(doc, dict) else {}
    if "config" not in params:
        raise LoadTestError(f"http://{host}:{port}: model text_encoder carries no rapdeploy.config parameter; is it a "
                            "`rapdeploy serve`?")
    try:
        config = RAPConfig.from_dict(json.loads(params["config"]))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise LoadTestError(f"http://{host}:{port}: model text_encoder's rapdeploy.config parameter is not a RAP "
                            f"config ({type(exc).__name__}); is it a `rapdeploy serve`?") from None
    ids, eot = tokenize(queries, config.tokenizer)
    bodies = [json.dumps({"inputs": [
        {"name": "input_ids", "datatype": "INT32", "shape": [1, ids.shape[1]], "data": ids[i].tolist()},
        {"name": "eot", "datatype": "INT32", "shape": [1], "data": [int(eot[i])]}]}).encode()
        for i in range(len(queries))]
    return "/v2/models/text_encoder/infer", bodies


def _client(host: str, port: int, path: str, bodies: list[bytes], start: int, deadline: float,
            take: Callable[[], bool], record: Callable[[float, int | str], None]) -> None:
    """Send requests on one keep-alive connection until ``deadline`` or ``take()`` says no more; ``record`` gets each
    one's seconds and status (or the exception's name). Returns nothing."""
    conn = http.client.HTTPConnection(host, port, timeout=60)
    i = start
    headers = {"Content-Type": "application/json"}
    while time.monotonic() < deadline and take():
        body = bodies[i % len(bodies)]
        i += 1
        t0 = time.perf_counter()
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            record(time.perf_counter() - t0, resp.status)
        except (OSError, http.client.HTTPException) as exc:
            record(time.perf_counter() - t0, type(exc).__name__)
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.close()


def run_load(url: str, target: str, clients: int, seconds: float, queries: list[str], top_k: int = 10,
             top_m: int = 100, max_requests: int = 200_000, warmup_seconds: float = 2.0) -> dict[str, Any]:
    """Drive ``clients`` concurrent clients at ``target`` for ``seconds`` (after an untimed warm-up); returns the
    report: requests, errors by status, throughput, latency percentiles of the answered (200) requests and the
    server's text-encoder counters. A refused or failed request is counted in ``errors``, never in the percentiles:
    a quick 503 would otherwise lower them as the server falls behind."""
    host, port = require_loopback(url)
    path, bodies = request_bodies(target, host, port, queries, top_k, top_m)
    if warmup_seconds > 0:
        _drive(host, port, path, bodies, clients, warmup_seconds, max_requests)
    tb0 = _text_batcher(host, port)
    t0 = time.perf_counter()
    latencies, statuses = _drive(host, port, path, bodies, clients, seconds, max_requests)
    wall = time.perf_counter() - t0
    tb1 = _text_batcher(host, port)
    lat = np.asarray([sec for sec, status in latencies if status == 200], dtype=np.float64) * 1e3
    ok = sum(n for s, n in statuses.items() if s == 200)
    rows, batches = tb1["rows"] - tb0["rows"], tb1["batches"] - tb0["batches"]
    engine_s = tb1["engine_seconds"] - tb0["engine_seconds"]
    return {"url": url, "target": target, "clients": clients, "seconds": wall, "requests": len(latencies), "ok": ok,
            "errors": {str(s): n for s, n in statuses.items() if s != 200},
            "throughput_rps": ok / wall if wall > 0 else 0.0,
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p90_ms": float(np.percentile(lat, 90)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
            "server": {"max_batch": tb1["max_batch"], "text_rows": rows, "text_batches": batches,
                       "mean_batch": rows / batches if batches else 0.0,
                       "text_rows_per_s": rows / wall if wall > 0 else 0.0, "engine_seconds": engine_s,
                       "text_rows_per_engine_second": rows / engine_s if engine_s > 0 else 0.0}}


def _drive(host: str, port: int, path: str, bodies: list[bytes], clients: int, seconds: float, max_requests: int
           ) -> tuple[list[tuple[float, int | str]], Counter]:
    """Each request's (seconds, status) and the count per status."""
    lock = threading.Lock()
    latencies: list[tuple[float, int | str]] = []
    statuses: Counter = Counter()
    issued = [0]
    stop = threading.Event()  # set when a signal ends the run: the clients send no further request

    def take() -> bool:
        with lock:
            if issued[0] >= max_requests or stop.is_set():
                return False
            issued[0] += 1
            return True

    def record(seconds_taken: float, status: int | str) -> None:
        with lock:
            latencies.append((seconds_taken, status))
            statuses[status] += 1

    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=_client, args=(host, port, path, bodies, k * 7, deadline, take, record),
                                daemon=True) for k in range(clients)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 120)
    except BaseException:  # Ctrl-C or SIGTERM (main's Terminated): the clients stop before the server does
        stop.set()
        _join_all(threads, STOP_JOIN_S)
        raise
    return latencies, statuses


def _join_all(threads: list[threading.Thread], timeout: float) -> None:
    """Wait up to ``timeout`` seconds in all for ``threads`` to end (a client ends after its request in flight)."""
    deadline = time.monotonic() + timeout
    for t in threads:
        if t.is_alive():
            t.join(max(0.0, deadline - time.monotonic()))


# ---------------------------------------------------------------------------------------------------- servers
class SpawnedServer:
    """``rapdeploy serve`` in a subprocess on 127.0.0.1 and a free port (context manager; always stopped; its log is
    in ``output`` afterwards). A Ctrl-C or SIGTERM while it starts stops it too, and removes its temporary folder."""

    def __init__(self, args: list[str], start_timeout: float = 300.0) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = ""  # the server's log, once stopped
        self.tmp = tempfile.TemporaryDirectory(prefix="rapdeploy-loadtest-")
        try:
            url_file = Path(self.tmp.name) / "url"
            self.log = open(Path(self.tmp.name) / "serve.log", "w+b")  # noqa: SIM115 - closed in stop()
            cmd = [sys.executable, "-m", "rap_deploy.cli", "serve", "--host", "127.0.0.1", "--port", "0",
                   "--url-file", str(url_file), *args]
            self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
            self.url = self._wait_for_url(url_file, start_timeout)
        except BaseException:  # a failed start, Ctrl-C or SIGTERM: no server or folder is left behind
            self.stop()
            raise

    def _wait_for_url(self, url_file: Path, start_timeout: float) -> str:
        """The URL the server wrote to ``url_file`` once it accepts requests; raises :class:`LoadTestError` with the
        end of its log when it exited or did not start within ``start_timeout`` seconds."""
        deadline = time.monotonic() + start_timeout
        while not url_file.is_file():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                tail = self.log.read()[-2000:].decode(errors="replace")
                raise LoadTestError(f"rapdeploy serve did not start: {tail.strip()}")
            time.sleep(0.1)
        return url_file.read_text().strip()

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 20 s), keep its log in ``output`` and remove its
        temporary folder; a second Ctrl-C or SIGTERM while it waits kills the server at once, then propagates."""
        try:
            self._end_process()
        finally:
            log = getattr(self, "log", None)
            if log is not None and not log.closed:
                log.seek(0)
                self.output = log.read().decode(errors="replace")
                log.close()
            self.tmp.cleanup()

    def _end_process(self) -> None:
        """Stop the server process, if it runs: SIGTERM, then SIGKILL when it has not exited after 20 s or the wait
        is interrupted. Returns once it has exited."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.proc.terminate()
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> SpawnedServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def compare(batched: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    """Ratios batched / one-at-a-time: request throughput and the server's texts encoded per second."""
    def ratio(a: float, b: float) -> float | None:
        return a / b if b else None

    return {"throughput_ratio": ratio(batched["throughput_rps"], baseline["throughput_rps"]),
            "text_rows_per_s_ratio": ratio(batched["server"]["text_rows_per_s"],
                                           baseline["server"]["text_rows_per_s"])}


def markdown(report: dict[str, Any]) -> str:
    """The runs as a Markdown table (and the batched / one-at-a-time ratios)."""
    lines = ["| target | server | clients | requests | errors | req/s | p50 ms | p99 ms | mean batch | texts/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        s = run["server"]
        lines.append(f"| {run['target']} | {run['label']} (max batch {s['max_batch']}) | {run['clients']} | "
                     f"{run['requests']} | {sum(run['errors'].values())} | {run['throughput_rps']:.1f} | "
                     f"{_number(run['p50_ms'], '.1f')} | {_number(run['p99_ms'], '.1f')} | {s['mean_batch']:.1f} | "
                     f"{s['text_rows_per_s']:.1f} |")
    for target, r in report.get("ratios", {}).items():
        lines.append("")
        lines.append(f"{target}: batched / one-at-a-time = {_number(r['throughput_ratio'], '.2f', 'x')} requests/s, "
                     f"{_number(r['text_rows_per_s_ratio'], '.2f', 'x')} texts encoded/s")
    return "\n".join(lines)


def _number(value: float | None, spec: str, unit: str = "") -> str:
    """``value`` formatted, or ``-`` when there is none (no answered request: no latency; a baseline that encoded
    nothing: no ratio), never a 0 that reads as a measurement."""
    return "-" if value is None else f"{value:{spec}}{unit}"


def _queries(path: Path | None, count: int = 512) -> list[str]:
    if path is None:
        from rap_deploy.engines.bench import template_captions

        return template_captions(count, seed=0)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LoadTestError(f"--queries {path}: cannot read it as UTF-8 text ({exc})") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise LoadTestError(f"{path} has no queries")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command-line entry (see the module docstring); returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m rap_deploy.engines.serving.loadtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="server to load (loopback)")
    p.add_argument("--baseline-url", help="a second server started with --max-batch 1, for the comparison")
    p.add_argument("--spawn", action="store_true", help="start the batched and the --max-batch 1 server here")
    p.add_argument("--engine", help="--spawn: engine for `rapdeploy serve`")
    p.add_argument("--library", help="--spawn: library for `rapdeploy serve`")
    p.add_argument("--max-batch", type=int, default=32, help="--spawn: text batch of the batched server")
    p.add_argument("--threads", type=int, help="--spawn: ONNX Runtime threads of the servers")
    p.add_argument("--target", default="search", help="comma list of search, text")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--warmup-seconds", type=float, default=2.0)
    p.add_argument("--max-requests", type=int, default=200_000)
    p.add_argument("--queries", type=Path, help="file with one query per line (default: template captions)")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--top-m", type=int, default=100)
    p.add_argument("--require-ratio", type=float, help="exit 1 unless batched/baseline texts/s reaches this "
                   "(needs --baseline-url or --spawn)")
    p.add_argument("--out", type=Path, help="write the report as JSON")
    a = p.parse_args(argv)
    from rap_deploy.cli.app import Terminated, sigterm_unwinds

    try:
        with sigterm_unwinds():  # the CLI's: SIGTERM unwinds as Terminated, so a spawned server is stopped
            report = _report(a)
    except LoadTestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_stopped_line("interrupted (Ctrl-C)", a.spawn), file=sys.stderr)
        return 130
    except Terminated:
        print(_stopped_line("terminated (SIGTERM)", a.spawn), file=sys.stderr)
        return 143
    failed = sum(sum(r["errors"].values()) for r in report["runs"])
    low = [t for t, r in report.get("ratios", {}).items()
           if a.require_ratio is not None and (r["text_rows_per_s_ratio"] or 0) < a.require_ratio]
    if failed or low:
        print(f"FAILED: {failed} failed requests" + (f"; ratio below {a.require_ratio} for {low}" if low else ""),
              file=sys.stderr)
        return 1
    return 0


def _report(a: argparse.Namespace) -> dict[str, Any]:
    """Run the load test ``a`` asks for, print its table and write ``--out``; returns the report. Raises
    :class:`LoadTestError` for bad usage or an ``--out`` that cannot be written."""
    _check_out(a.out)
    report = _run(a)
    print(markdown(report))
    if a.out is not None:
        from rap_deploy.atomic import write_json_atomic

        try:
            write_json_atomic(a.out, report)
        except OSError as exc:
            raise LoadTestError(f"cannot write --out {a.out} ({exc.strerror or exc})") from None
    return report


def _stopped_line(how: str, spawned: bool) -> str:
    """The one line a load test stopped by a signal (``how``: ``interrupted (Ctrl-C)``, ``terminated (SIGTERM)``)
    ends with; ``spawned`` says it had started its servers (``--spawn``), which are stopped by then."""
    return (f"error: {how}; the load test stopped without a report"
            + (" and the servers it started are stopped" if spawned else ""))


def _check_out(out: Path | None) -> None:
    """Refuse an ``--out`` that cannot become a file (a folder, or under a file) before any load is sent."""
    from rap_deploy.atomic import output_file_problem

    problem = output_file_problem(out) if out is not None else None
    if problem is not None:
        raise LoadTestError(f"--out {problem}")


def _run(a: argparse.Namespace) -> dict[str, Any]:
    targets = [t.strip() for t in a.target.split(",") if t.strip()]
    if not targets or any(t not in TARGETS for t in targets):
        raise LoadTestError(f"--target takes a comma list of {', '.join(TARGETS)}, got {a.target!r}")
    if not 1 <= a.clients <= MAX_CLIENTS or not 0 < a.seconds <= MAX_SECONDS or a.max_requests < 1:
        raise LoadTestError(f"need 1 <= --clients <= {MAX_CLIENTS}, 0 < --seconds <= {MAX_SECONDS:g}, "
                            "--max-requests >= 1")
    from rap_deploy.engines.serving.service import ServeOptions

    limits = ServeOptions()  # the server's /search bounds (its defaults)
    if not (1 <= a.top_k <= limits.max_top_k and 1 <= a.top_m <= limits.max_top_m
            and 0 <= a.warmup_seconds <= MAX_SECONDS):  # NaN fails too
        raise LoadTestError(f"need 1 <= --top-k <= {limits.max_top_k}, 1 <= --top-m <= {limits.max_top_m} and 0 <= "
                            f"--warmup-seconds <= {MAX_SECONDS:g}, got {a.top_k}, {a.top_m}, {a.warmup_seconds}")
    if a.spawn == bool(a.url):
        raise LoadTestError("pass either --url (and optionally --baseline-url) or --spawn --engine ...")
    if a.require_ratio is not None and not (a.spawn or a.baseline_url):
        raise LoadTestError("--require-ratio compares with a one-at-a-time server: pass --baseline-url or --spawn")
    queries = _queries(a.queries)
    settings = {"clients": a.clients, "seconds": a.seconds, "targets": targets, "top_k": a.top_k, "top_m": a.top_m,
                "cpu": _cpu(), "load_before": os.getloadavg()}

    def measure(url: str, label: str) -> list[dict[str, Any]]:
        return [{**run_load(url, t, a.clients, a.seconds, queries, a.top_k, a.top_m, a.max_requests,
                            a.warmup_seconds), "label": label} for t in targets]

    runs: list[dict[str, Any]] = []
    if a.spawn:
        if not a.engine:
            raise LoadTestError("--spawn needs --engine")
        common = ["--engine", a.engine] + (["--library", a.library] if a.library else []) + \
            (["--threads", str(a.threads)] if a.threads else [])
        for label, batch in (("batched", a.max_batch), ("one-at-a-time", 1)):
            with SpawnedServer([*common, "--max-batch", str(batch)]) as server:
                runs += measure(server.url, label)
    else:
        runs += measure(a.url, "batched" if a.baseline_url else "server")
        if a.baseline_url:
            runs += measure(a.baseline_url, "one-at-a-time")
    ratios = {}
    for t in targets:
        pair = [r for r in runs if r["target"] == t]
        if len(pair) == 2:
            ratios[t] = compare(pair[0], pair[1])
    return {"settings": {**settings, "load_after": os.getloadavg()}, "runs": runs, "ratios": ratios}


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x {os.cpu_count()}"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs"


if __name__ == "__main__":
    raise SystemExit(main())
