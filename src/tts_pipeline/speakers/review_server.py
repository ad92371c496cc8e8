"""`tts-pipeline speakers review`: serve the review page on 127.0.0.1, with edits when it can.

With a corrections file the page is interactive (each action goes through `review_edit`);
without one the output folder is served read-only.
"""

from __future__ import annotations

import functools
import http.server
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ..errors import PipelineError
from ..localserver import PageHandler, bind_server, serve_until_interrupted
from ..metadata import resolve_clip_path
from .layout import REVIEW_FILE
from .review_edit import CorrectionsEditor, EditError, ReviewState

log = logging.getLogger(__name__)


@dataclass
class ReviewServerApp:
    """What `speakers review` serves: the page, the clips' audio, and the corrections edits."""

    output_dir: Path
    corrections_file: Path
    audio_dir: Path | None = None
    rerun: str = "tts-pipeline speakers --config <language file>"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def state(self) -> dict[str, Any]:
        current = ReviewState.read(self.output_dir)
        text = (
            self.corrections_file.read_text(encoding="utf-8-sig") if self.corrections_file.is_file() else ""
        )
        return {
            "corrections_file": str(self.corrections_file),
            "corrections": text,
            "rerun": self.rerun,
            "speakers": {str(k): v for k, v in sorted(current.names.items())},
            "audio": self.audio_dir is not None,
        }

    def edit(self, request: dict[str, Any]) -> dict[str, Any]:
        with self.lock:  # two tabs must not interleave read-modify-write
            editor = CorrectionsEditor(self.corrections_file, ReviewState.read(self.output_dir))
            message = editor.apply(request)
            backup = editor.save()
        log.info("review: %s (%s)", message, self.corrections_file)
        return {
            "message": message,
            "corrections_file": str(self.corrections_file),
            "backup": str(backup) if backup else None,
            "corrections": editor.text(),
            "rerun": self.rerun,
        }

    def clip_audio(self, name: str) -> Path | None:
        """A clip's audio, only for file names of the last run (no path tricks)."""
        if self.audio_dir is None:
            return None
        if name not in ReviewState.read(self.output_dir).clip_speaker:
            return None
        path = resolve_clip_path(self.audio_dir, name)
        return path if path.is_file() else None


class ReviewHandler(PageHandler):
    """GET the page, `audio/<clip>` and `api/state`; POST `api/edit`."""

    server_version = "tts-pipeline-review"

    @property
    def app(self) -> ReviewServerApp:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("review server: " + format, *args)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode("utf-8"), "application/json")

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = unquote(urlparse(self.path).path)
        if path in ("/", "/review.html"):
            page = self.app.output_dir / REVIEW_FILE
            self._send(200, page.read_bytes(), "text/html; charset=utf-8")
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        elif path == "/api/state":
            self._json(200, self.app.state())
        elif path.startswith("/audio/"):
            file = self.app.clip_audio(path[len("/audio/") :])
            if file is None:
                self._json(404, {"error": "no such clip"})
                return
            types = {".wav": "audio/wav", ".webm": "audio/webm", ".flac": "audio/flac", ".ogg": "audio/ogg"}
            self._send(200, file.read_bytes(), types.get(file.suffix, "application/octet-stream"))
        else:
            self._json(404, {"error": "not found"})

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if self.path != "/api/edit":
            self._json(404, {"error": "not found"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(min(length, 65536)) or b"{}")
            if not isinstance(request, dict):
                raise ValueError("expected a JSON object")
            self._json(200, self.app.edit(request))
        except EditError as exc:
            self._json(400, {"error": str(exc)})
        except ValueError as exc:
            self._json(400, {"error": f"bad request: {exc}"})
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the server
            log.exception("review edit failed")
            self._json(500, {"error": f"{type(exc).__name__}: {exc}"})


def make_review_app_server(app: ReviewServerApp, port: int = 0) -> http.server.ThreadingHTTPServer:
    """The review server on 127.0.0.1 (port 0 = any free port), not yet serving."""

    server = bind_server("127.0.0.1", port, ReviewHandler)
    server.daemon_threads = True
    server.app = app  # type: ignore[attr-defined]
    return server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files of the output directory; request lines go to the debug log, not stderr."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("review server: " + format, *args)


def make_review_server(directory: Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    """An HTTP server for the output directory on 127.0.0.1 (port 0 = any free port)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    return bind_server("127.0.0.1", port, handler)


def serve_review(
    directory: Path,
    port: int = 0,
    open_browser: bool = True,
    *,
    corrections_file: Path | None = None,
    audio_dir: Path | None = None,
    rerun: str = "tts-pipeline speakers --config <language file>",
) -> None:
    """Serve review.html until Ctrl-C and print its URL.

    With a `corrections_file` the page is interactive: rename, merge, move, pin and split are
    written to that file (see `ReviewServerApp`); without one it is read-only.
    """
    page = directory / REVIEW_FILE
    if not page.is_file():
        raise PipelineError(f"{page}: no review page yet; run `tts-pipeline speakers --config ...` first")
    if corrections_file is None:
        server = make_review_server(directory, port)
    else:
        app = ReviewServerApp(directory, corrections_file, audio_dir, rerun)
        app.state()  # fail now (no speaker_ids.json) rather than on the first click
        server = make_review_app_server(app, port)
    url = f"http://127.0.0.1:{server.server_address[1]}/{REVIEW_FILE}"
    serve_until_interrupted(
        server, f"speaker review page: {url}  (Ctrl-C to stop)", url if open_browser else None
    )
