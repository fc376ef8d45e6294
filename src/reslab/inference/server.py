"""``reslab serve``: a small local web page to try a trained model.

Standard library only (``http.server``): one page, ``GET /api/info`` (the model and its
classes) and ``POST /api/predict`` (the image bytes as the body, or a multipart form with
one file) answering with the top-k predictions and a Grad-CAM overlay as JSON. Uploads
are size-limited and decoded in memory, never written to disk; anything that is not an
image gets HTTP 400 with a message. It binds to 127.0.0.1 unless told otherwise, and has
no authentication.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import json
import logging
import math
import re
import socket
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import torch
from torch import nn

from ..errors import ReslabError
from ..evaluate.runner import check_finite_logits
from .gradcam import GradCAM, overlay
from .predict import class_index, decode_image, is_multi_label, load_model, normalize, rank_classes, temperature

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 10.0
MAX_UPLOAD_MB = 1024.0  # an image upload of more than 1 GiB is a mistake, and the body is held in memory
# Each request's line, headers and body must arrive within this many seconds, however slowly
# the client sends them (a per-read timeout alone lets 1 byte a second hold a thread for ever).
REQUEST_DEADLINE_SECONDS = 30.0
# A body's size: ASCII digits, few enough for int() (which refuses over 4,300, and "²") and any upload.
CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# After refusing an upload, read and drop at most this much more of it, for at most this long.
DRAIN_EXTRA_BYTES = 1024 * 1024
DRAIN_SECONDS = 2.0


class ModelService:
    """The model behind the page. One request at a time uses it: Grad-CAM's hooks see every
    forward pass of the model, so two interleaved requests would mix their feature maps."""

    def __init__(self, model: nn.Module, meta: dict, top_k: int = 5, threshold: float = 0.5,
                 max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024)):
        self.model = model.eval()
        self.meta = meta
        self.top_k = top_k
        self.threshold = threshold
        self.max_upload_bytes = max_upload_bytes
        self.device = next(model.parameters()).device
        self.lock = threading.Lock()

    def info(self) -> dict:
        meta = self.meta
        return {"model": meta["model"], "dataset": meta.get("dataset"), "task": meta.get("task", "single-label"),
                "classes": meta["classes"], "image_size": meta["image_size"], "in_channels": meta["in_channels"],
                "top_k": self.top_k, "threshold": self.threshold if is_multi_label(meta) else None,
                "temperature": meta.get("temperature"),
                "max_upload_bytes": self.max_upload_bytes}

    def predict(self, data: bytes, class_name: str | None = None) -> dict:
        """Predictions and the Grad-CAM overlay for image bytes; ReslabError for bad input."""
        image = decode_image(data, self.meta)
        target = class_index(self.meta, class_name) if class_name else None
        with self.lock:
            explained = GradCAM(self.model)(normalize(image[None], self.meta, self.device), target)
        logits = explained.logits
        check_finite_logits(logits, self.meta["model"])
        if is_multi_label(self.meta):
            probs = torch.sigmoid(logits)
        else:
            probs = torch.softmax(logits / temperature(self.meta), 1)
        if is_multi_label(self.meta):
            ranked = rank_classes(probs, {**self.meta, "task": "single-label"}, self.top_k)[0]
            for entry in ranked:
                entry["over_threshold"] = entry["probability"] > self.threshold
        else:
            ranked = rank_classes(probs, self.meta, self.top_k)[0]
        explained_index = int(explained.targets[0])
        return {"predictions": ranked, "task": self.meta.get("task", "single-label"),
                "explained_class": self.meta["classes"][explained_index], "explained_index": explained_index,
                "image": _png_data_url(overlay(image, explained.maps[0], alpha=0.0)),
                "gradcam": _png_data_url(overlay(image, explained.maps[0]))}


def _png_data_url(picture) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def index_page() -> bytes:
    return resources.files("reslab.inference").joinpath("static/index.html").read_bytes()


def image_from_multipart(content_type: str, body: bytes) -> bytes:
    """The first file part of a multipart/form-data body (``curl -F image=@digit.png``)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body)
    if not message.is_multipart():
        raise ReslabError("malformed multipart/form-data body")
    for part in message.iter_parts():
        if part.get_filename() is not None or part.get_content_maintype() == "image":
            return part.get_payload(decode=True) or b""
    raise ReslabError("the form holds no file; send the image as a file field")


class _DeadlineReader(io.RawIOBase):
    """The connection's input, read with no more time than the request has left: each read
    waits at most until ``handler.deadline`` and then raises TimeoutError."""

    def __init__(self, handler: Handler):
        self.handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's deadline passed")
        connection = self.handler.connection
        connection.settimeout(min(left, self.handler.timeout))
        try:
            return connection.recv_into(buffer)
        finally:
            connection.settimeout(self.handler.timeout)  # writing the answer keeps the usual timeout


class Handler(BaseHTTPRequestHandler):
    server_version = "reslab"
    # A request line too malformed to name its version is answered with a status line too,
    # not HTTP/0.9's bare body (the standard library's default).
    default_request_version = "HTTP/1.0"
    timeout = 30  # seconds a client may stall mid-request before its connection is dropped
    service: ModelService  # set on the subclass made per server
    quiet = False
    deadline = 0.0  # time.monotonic() by which the request in hand must have arrived

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket's own file: left open, it would keep the socket from closing
        self.rfile = io.BufferedReader(_DeadlineReader(self))

    def handle_one_request(self) -> None:
        self.deadline = time.monotonic() + REQUEST_DEADLINE_SECONDS  # request line, headers and body
        super().handle_one_request()

    # ------------------------------------------------------------ responses

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        if content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                                                        "script-src 'unsafe-inline'; connect-src 'self'")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: dict) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, status: int, message: str, unread: int | None = 0) -> None:
        """Answer with ``{"error": message}`` and close. ``unread``: body bytes the client may
        still be sending (None: unknown), read and dropped after the answer, within bounds,
        so that the client gets to read the answer instead of a connection reset."""
        self.close_connection = True
        self._json(status, {"error": message})
        if unread != 0:
            self._discard(unread)

    def _discard(self, unread: int | None) -> None:
        cap = 4 * self.service.max_upload_bytes + DRAIN_EXTRA_BYTES
        left = cap if unread is None else min(unread, cap)
        self.deadline = time.monotonic() + DRAIN_SECONDS
        try:
            while left > 0:
                chunk = self.rfile.read1(min(65536, left))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:  # the client hung up or went quiet: nothing more to do
            pass

    # ------------------------------------------------------------ routes

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, index_page(), "text/html; charset=utf-8")
        elif path == "/api/info":
            self._json(HTTPStatus.OK, self.service.info())
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such page: {path}")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/api/predict":
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {url.path}", None)
            return
        body = self._read_body()
        if body is None:
            return
        query = parse_qs(url.query)
        class_name = query.get("class", [None])[0]
        content_type = self.headers.get("Content-Type", "")
        try:
            data = image_from_multipart(content_type, body) if content_type.startswith("multipart/") else body
            if not data:
                raise ReslabError("empty upload; send an image file")
            result = self.service.predict(data, class_name)
        except ReslabError as exc:
            self._error(HTTPStatus.BAD_REQUEST, f"refused: {exc}")
            return
        except Exception:  # a bug, not the user's doing: keep the traceback in the server's log
            traceback.print_exc()
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the server's log")
            return
        self._json(HTTPStatus.OK, result)

    def _read_body(self) -> bytes | None:
        """The request body, or None once an error has been sent (the body is then left
        unread and the connection closed, so an oversized upload costs nothing)."""
        limit = self.service.max_upload_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._error(HTTPStatus.LENGTH_REQUIRED, "send the upload with a Content-Length, not chunked", None)
            return None
        length = self.headers.get("Content-Length")
        if length is None:
            self._error(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required", None)
            return None
        length = length.strip()
        if not CONTENT_LENGTH.fullmatch(length):
            shown = repr(length) if len(length) <= 40 else f"{length[:40]!r}... ({len(length)} characters)"
            self._error(HTTPStatus.BAD_REQUEST, f"invalid Content-Length {shown}: give the body's size in bytes, "
                        f"at most 18 digits", None)
            return None
        if int(length) > limit:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"upload of {int(length):,} bytes is over the limit of {limit:,} bytes", int(length))
            return None
        try:
            body = self.rfile.read(int(length))
        except TimeoutError:
            self._error(HTTPStatus.REQUEST_TIMEOUT, f"the upload did not arrive within "
                        f"{REQUEST_DEADLINE_SECONDS:g} s (or stalled)")
            return None
        if len(body) < int(length):
            self._error(HTTPStatus.BAD_REQUEST, "the upload ended before Content-Length bytes")
            return None
        return body

    def log_message(self, format: str, *args) -> None:
        if not self.quiet:
            super().log_message(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def check_settings(port: int, top_k: int, threshold: float, max_upload_mb: float) -> None:
    """The server's flags, refused in one line each (before the model loads)."""
    if top_k < 1:
        raise ReslabError(f"--top-k must be at least 1, got {top_k}")
    if not 0.0 <= threshold <= 1.0:
        raise ReslabError(f"--threshold must be between 0 and 1, got {threshold}")
    if not (math.isfinite(max_upload_mb) and 0 < max_upload_mb <= MAX_UPLOAD_MB):
        raise ReslabError(f"--max-upload-mb must be a number of megabytes above 0 and at most {MAX_UPLOAD_MB:g}, "
                          f"got {max_upload_mb}")
    if not 0 <= port <= 65535:
        raise ReslabError(f"--port must be 0..65535, got {port}")


def make_server(model: nn.Module, meta: dict, host: str = "127.0.0.1", port: int = 8000, top_k: int = 5,
                threshold: float = 0.5, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
                quiet: bool = False) -> ThreadingHTTPServer:
    """A bound (not yet serving) server; ``port=0`` takes a free port (``server.server_address``)."""
    check_settings(port, top_k, threshold, max_upload_mb)
    service = ModelService(model, meta, top_k, threshold, int(max_upload_mb * 1024 * 1024))
    handler = type("ReslabHandler", (Handler,), {"service": service, "quiet": quiet})
    server_class = _Server
    if ":" in host:  # an IPv6 address such as ::1
        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    try:
        return server_class((host, port), handler)
    except OSError as exc:
        raise ReslabError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve(checkpoint: str, host: str = "127.0.0.1", port: int = 8000, top_k: int = 5, threshold: float = 0.5,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, device: str = "auto") -> int:
    check_settings(port, top_k, threshold, max_upload_mb)
    model, meta = load_model(Path(checkpoint), device)
    server = make_server(model, meta, host, port, top_k, threshold, max_upload_mb)
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    if host not in LOOPBACK:
        logger.warning("warning: listening on %s, reachable from other machines; the page has no authentication",
                       host)
    logger.info("serving %s (%d classes) at http://%s:%s/  (uploads up to %g MB; Ctrl+C stops)", meta["model"],
                len(meta["classes"]), shown, bound_port, max_upload_mb)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("stopped")
    finally:
        server.server_close()
    return 0
