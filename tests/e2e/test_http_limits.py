"""Header limits and the header deadline on the parser in use (httptools),
checked with raw sockets and with slowhttptest against the real server."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.support.gateway import ROOT, Gateway
from tests.support.raw_http import read_response

SLOWHTTPTEST = ROOT / ".cache" / "slowhttptest" / "usr" / "bin" / "slowhttptest"


def raw(url: str, payload: bytes, pause: float = 0.0, timeout: float = 10.0) -> bytes:
    """Send `payload` (in pieces separated by `pause` if set) and read to EOF."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as s:
        if pause:
            for line in payload.split(b"\r\n"):
                try:
                    s.sendall(line + b"\r\n")
                except OSError:
                    break  # the server closed on us: read its answer
                time.sleep(pause)
        else:
            s.sendall(payload)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def status_and_error(response: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    return int(head.split()[1]), json.loads(body)["error"]


def request(headers: list[tuple[str, str]]) -> bytes:
    lines = ["GET /health/live HTTP/1.1", "Host: x", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_too_many_headers_is_431(gateway: Gateway) -> None:
    ok = raw(gateway.url, request([(f"x-h{i}", "v") for i in range(90)]).replace(b"1.1", b"1.0", 1))
    assert ok.startswith(b"HTTP/1.1 200")  # under the default 100 fields
    status, error = status_and_error(
        raw(gateway.url, request([(f"x-h{i}", "v") for i in range(150)]))
    )
    assert (status, error["code"]) == (431, "headers_too_large")


def test_oversized_header_is_431_before_it_is_buffered(gateway: Gateway) -> None:
    # One 40 KiB value (default limit 32 KiB), never finished by CRLF: the
    # server must answer without waiting for the end of the line.
    payload = b"GET /health/live HTTP/1.1\r\nHost: x\r\nx-big: " + b"a" * 40_000
    status, error = status_and_error(raw(gateway.url, payload))
    assert (status, error["type"]) == (431, "invalid_request_error")


def test_large_body_still_flows_past_the_header_slicing(gateway: Gateway) -> None:
    # A body far larger than the header limit, sent with its headers in one
    # write, is read whole (here: parsed and answered 400 for the bad model).
    body = json.dumps({"model": "nope", "prompt": "x " * 200_000}).encode()
    payload = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    response = raw(gateway.url, payload)
    assert response.startswith(b"HTTP/1.1 404"), response[:200]
    assert b"model_not_found" in response


def test_slow_headers_get_408(secured: Gateway) -> None:
    # GATEWAY_HEADER_TIMEOUT=2 on this gateway; a header line every 0.5 s.
    slow = request([(f"x-drip{i}", "v") for i in range(20)])
    start = time.monotonic()
    status, error = status_and_error(raw(secured.url, slow, pause=0.5))
    assert (status, error["code"]) == (408, "header_timeout")
    assert 1.5 < time.monotonic() - start < 5


def test_slowloris_does_not_stop_liveness(secured: Gateway, tmp_path: Path) -> None:
    assert SLOWHTTPTEST.exists(), f"{SLOWHTTPTEST} missing: run `make setup`"
    attack = subprocess.Popen(
        [
            str(SLOWHTTPTEST),
            "-H",  # slow headers
            "-c", "800",  # connections
            "-r", "400",  # opened per second
            "-i", "1",  # a header line per connection per second
            "-l", "10",  # seconds
            "-x", "24",
            "-p", "2",
            "-u", f"{secured.url}/health/live",
            "-g", "-o", str(tmp_path / "stats"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # The attack ends once the 2 s header deadline has closed all 800 of its
    # connections: ~4.6 s after it starts (opened over 2 s, each closed 2 s
    # later). Probe from the first second on, every 0.1 s, while it runs:
    # ~20 probes, each against hundreds of open attack connections.
    slowest = 0.0
    answered = 0
    try:
        time.sleep(1)  # let the connections pile up (~350 by now)
        while attack.poll() is None:
            start = time.monotonic()
            r = httpx.get(f"{secured.url}/health/live", timeout=5)
            slowest = max(slowest, time.monotonic() - start)
            assert r.status_code == 200
            answered += 1
            time.sleep(0.1)
    finally:
        attack.kill()
        attack.wait()
    assert answered >= 10
    assert slowest < 1.0, slowest
    with (tmp_path / "stats.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert max(int(r["Connected"]) for r in rows) >= 100, rows[-3:]  # the attack was on
    # The header deadline (2 s) closes attack connections while it runs.
    assert int(rows[-1]["Closed"]) >= 100, rows[-3:]


def _exchange(sock: socket.socket, payload: bytes) -> bytes:
    """One request on a kept-alive connection, and its whole answer."""
    sock.sendall(payload)
    return read_response(sock)


def test_header_limits_apply_per_request_on_a_kept_alive_connection(gateway: Gateway) -> None:
    # Exactly max_headers fields (100, Host included) pass, again and again on
    # one connection; each request's header bytes count on their own (three
    # requests of ~20 KiB each are fine under the 32 KiB limit); one field
    # more is a 431 that closes the connection.
    at_limit = request([(f"x-h{i}", "v" * 200) for i in range(99)])  # + Host = 100
    assert 19_000 < len(at_limit) < 32 * 1024
    parts = urlsplit(gateway.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        for _ in range(3):
            assert _exchange(sock, at_limit).startswith(b"HTTP/1.1 200")
        over = _exchange(sock, request([(f"x-h{i}", "v") for i in range(100)]))  # 101
        status, error = status_and_error(over)
        assert (status, error["code"]) == (431, "headers_too_large")
        assert sock.recv(1) == b""  # closed after it
