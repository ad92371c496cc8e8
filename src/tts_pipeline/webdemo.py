"""`tts-pipeline demo`: a small local web page to try the trained voice.

Type text, pick a speaker, press Speak: the browser POSTs to `/api/synthesize` and plays the
WAV it gets back. The page also lists the verses `synthesize` voiced, with players.

Why the standard library (`http.server.ThreadingHTTPServer`) and not Gradio: no extra
dependency, nothing fetched from the internet by the page, and it runs on the same CPU box
as the rest of the pipeline. It binds to 127.0.0.1 unless `--host` says otherwise.

    GET  /                      the page
    GET  /api/info              speakers, model revision, synthesized verses (JSON)
    POST /api/check             {"text": "..."} -> what the model reads, characters it drops or romanises
    POST /api/synthesize        {"text", "speaker", "speaking_rate", "noise"} -> audio/wav
    POST /api/approval          {"verse_id", "model_revision", "verdict": approved|rejected|null}
    GET  /synthesized/<file>    a synthesized take listed in synthesized/metadata.csv

Approvals are saved beside the synthesized folder (`approvals.py`); `synthesize --write-back`
writes only approved takes when `synthesis.require_approval` is on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import numpy as np

from . import approvals, modeling
from .audio import wav_bytes
from .errors import PipelineError
from .localserver import PageHandler, bind_server, serve_until_interrupted
from .metadata import MetadataError, read_metadata
from .pages import render
from .text import tokenizer_view
from .verses import missing_verses, source_documents
from .voice import NONFINITE_AUDIO, model_revision, resolve_model_dir, text_chunks, text_normalizer
from .voice import render as render_speech

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config, SynthesisSection

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 2000
MAX_BODY_BYTES = 64 * 1024
MAX_EXAMPLES = 8
REQUEST_TIMEOUT_S = 60  # the page gives up waiting for one synthesis after this long
CONTENT_TYPES = {".webm": "audio/webm", ".wav": "audio/wav", ".ogg": "audio/ogg", ".mp3": "audio/mpeg"}


@dataclass
class DemoApp:
    """What the handler needs: the voice, how to prepare text, and the synthesized takes."""

    voice: modeling.LoadedVoice
    settings: SynthesisSection
    normalize: Callable[[str], str]
    revision: str = ""
    synthesized_dir: Path | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    examples: list[dict[str, str]] = field(default_factory=list)  # unrecorded verses: verse_id, text
    approvals_file: Path | None = None
    rerun: str = "tts-pipeline demo --config <language file>"

    def speakers(self) -> list[dict[str, Any]]:
        return [
            {"id": sid, "name": str(info.get("name", f"speaker_{sid}")), "hours": info.get("hours")}
            for sid, info in sorted(self.voice.speakers.items())
        ]

    def verses(self) -> list[dict[str, str]]:
        """Rows of synthesized/metadata.csv whose audio exists (empty when nothing was voiced yet)."""
        if self.synthesized_dir is None:
            return []
        try:
            rows = read_metadata(self.synthesized_dir / "metadata.csv")
        except MetadataError:
            return []
        return [r for r in rows if (self.synthesized_dir / r["file_name"]).is_file()]

    def check(self, text: str) -> dict[str, Any]:
        """What the model will read of `text`: the characters kept, dropped and romanised.

        Same steps as synthesis (split, normalise, then the tokenizer's own preparation), so
        the page can warn before anything is voiced.
        """
        raw = " ".join(text.split())
        kept, dropped, romanised = [], [], []
        for chunk in text_chunks(text, self.settings.max_chars, self.normalize):
            view = tokenizer_view(chunk, self.voice.tokenizer)
            kept.append(view.kept)
            dropped += view.dropped
        normalized = " ".join(text_chunks(text, self.settings.max_chars, self.normalize))
        # Letters the normalisation (uroman) replaced: in the text, gone from what the model reads.
        for char in dict.fromkeys(raw.lower()):
            if not char.isascii() and char.isalpha() and char not in normalized and char not in dropped:
                romanised.append(char)
        return {
            "model_input": " ".join(k for k in kept if k),
            "dropped": [c for c in dict.fromkeys(dropped) if not c.isspace()],
            "romanised": romanised,
        }

    def speak(
        self,
        text: str,
        speaker: str | int | None,
        speaking_rate: float | None = None,
        noise: float | None = None,
    ) -> bytes:
        """WAV bytes of `text` (split and normalised exactly as `synthesize` does)."""
        chunks = text_chunks(text, self.settings.max_chars, self.normalize)
        if not chunks:
            raise ValueError("the text is empty after normalisation")
        speaker_id = self.voice.speaker_id(speaker)
        settings = self.settings
        if speaking_rate is not None:
            settings = dataclasses.replace(settings, speaking_rate=speaking_rate)
        with self.lock:  # one forward pass at a time: torch on CPU already uses every core
            model = self.voice.model
            default_noise = getattr(model, "noise_scale", None)
            if noise is not None and default_noise is not None:
                model.noise_scale = noise
            try:
                samples = render_speech(self.voice, chunks, speaker_id, settings)
            finally:
                if default_noise is not None:
                    model.noise_scale = default_noise
        if samples.size == 0:
            raise ValueError("no character of the text is in the model's vocabulary")
        if not np.isfinite(samples).all():  # written as WAV it would be full-scale noise
            raise ValueError(NONFINITE_AUDIO)
        return wav_bytes(samples, self.voice.sampling_rate)

    def verdicts(self) -> dict[str, dict[str, str]]:
        return approvals.load(self.approvals_file) if self.approvals_file else {}

    def approve(self, verse_id: Any, model_revision: Any, verdict: Any) -> dict[str, Any]:
        """Record a reviewer's verdict on a synthesized take listed in metadata.csv."""
        if self.approvals_file is None:
            raise ValueError("no synthesized folder: approvals are kept beside it")
        if not any(
            r.get("verse_id") == verse_id and r.get("model_revision") == model_revision for r in self.verses()
        ):
            raise ValueError(f"no synthesized take of {verse_id!r} by model {model_revision!r}")
        return approvals.record(self.approvals_file, str(verse_id), str(model_revision), verdict)

    def audio_file(self, name: str) -> Path | None:
        """A synthesized take by its file_name, only if metadata.csv lists it (no path tricks)."""
        for row in self.verses():
            if row["file_name"] == name:
                return self.synthesized_dir / name  # type: ignore[operator]
        return None


def render_page(app: DemoApp) -> str:
    """The HTML page (template `demo.html.j2`, no external resources)."""
    verdicts = app.verdicts()
    verses = [
        dict(r, verdict=verdicts.get(approvals.row_key(r), {}).get("verdict", "")) for r in app.verses()
    ]
    model = app.voice.model
    return render(
        "demo.html.j2",
        revision=app.revision,
        speakers=app.speakers(),
        default_speaker=app.voice.speaker_id(None),
        examples=app.examples,
        verses=verses,
        max_chars=MAX_TEXT_CHARS,
        speaking_rate=app.settings.speaking_rate,
        noise=float(getattr(model, "noise_scale", 0.667) if model is not None else 0.667),
        approvals_file=str(app.approvals_file or ""),
        data={"timeout_ms": REQUEST_TIMEOUT_S * 1000, "rerun": app.rerun},
    )


class DemoHandler(PageHandler):
    """Routes the few URLs of the page; `server.app` is the DemoApp."""

    server_version = "tts-pipeline-demo"

    @property
    def app(self) -> DemoApp:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def _error(self, status: int, message: str) -> None:
        self._send(status, message.encode("utf-8"), "text/plain; charset=utf-8")

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = unquote(urlparse(self.path).path)
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, render_page(self.app).encode("utf-8"), "text/html; charset=utf-8")
        elif path == "/favicon.ico":  # browsers ask for it; a 404 would be a console error
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        elif path == "/api/info":
            info = {
                "speakers": self.app.speakers(),
                "default_speaker": self.app.voice.speaker_id(None),
                "model_revision": self.app.revision,
                "sampling_rate": self.app.voice.sampling_rate,
                "verses": self.app.verses(),
                "examples": self.app.examples,
                "approvals": self.app.verdicts(),
            }
            self._send(HTTPStatus.OK, json.dumps(info).encode("utf-8"), "application/json")
        elif path.startswith("/synthesized/"):
            file = self.app.audio_file(path[len("/synthesized/") :])
            if file is None:
                self._error(HTTPStatus.NOT_FOUND, "no such synthesized take")
                return
            self._send(
                HTTPStatus.OK, file.read_bytes(), CONTENT_TYPES.get(file.suffix, "application/octet-stream")
            )
        else:
            self._error(HTTPStatus.NOT_FOUND, "not found")

    do_HEAD = do_GET

    def _read_json(self) -> dict[str, Any] | None:
        """The request body as a JSON object, or None after answering with the error."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY_BYTES} bytes")
            return None
        try:
            request = json.loads(self.rfile.read(length) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            request = None
        if not isinstance(request, dict):
            self._error(HTTPStatus.BAD_REQUEST, 'expected a JSON object, e.g. {"text": "..."}')
            return None
        return request

    def _text(self, request: dict[str, Any]) -> str | None:
        text = request.get("text")
        if not isinstance(text, str) or not text.strip():
            self._error(HTTPStatus.BAD_REQUEST, "text is required")
            return None
        if len(text) > MAX_TEXT_CHARS:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"text over {MAX_TEXT_CHARS} characters")
            return None
        return text

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        route = urlparse(self.path).path
        if route not in ("/api/synthesize", "/api/check", "/api/approval"):
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        request = self._read_json()
        if request is None:
            return
        try:
            if route == "/api/approval":
                entry = self.app.approve(
                    request.get("verse_id"), request.get("model_revision"), request.get("verdict")
                )
                self._send(HTTPStatus.OK, json.dumps(entry).encode("utf-8"), "application/json")
                return
            text = self._text(request)
            if text is None:
                return
            if route == "/api/check":
                self._send(
                    HTTPStatus.OK, json.dumps(self.app.check(text)).encode("utf-8"), "application/json"
                )
                return
            speaker = request.get("speaker")
            wav = self.app.speak(
                text,
                None if speaker in (None, "") else str(speaker),
                _number(request.get("speaking_rate"), "speaking_rate", 0.25, 4.0),
                _number(request.get("noise"), "noise", 0.0, 2.0),
            )
        except (PipelineError, ValueError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        except Exception:  # noqa: BLE001 - a failed request must not stop the server
            log.exception("request %s failed", route)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "synthesis failed; see the server log")
            return
        self._send(HTTPStatus.OK, wav, "audio/wav")


def _number(value: Any, name: str, low: float, high: float) -> float | None:
    """An optional number from the request, within [low, high] (a clear 400 otherwise)."""
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{name}: {number} is outside [{low}, {high}]")
    return number


def make_server(app: DemoApp, host: str = "127.0.0.1", port: int = 7860) -> ThreadingHTTPServer:
    """A ready (not yet serving) HTTP server for `app`; port 0 picks a free port."""
    server = bind_server(host, port, DemoHandler)
    server.daemon_threads = True
    server.app = app  # type: ignore[attr-defined]
    return server


def build_app(
    model_dir: str | Path,
    synthesized_dir: str | Path | None,
    settings: SynthesisSection,
    normalize: Callable[[str], str],
    examples: list[dict[str, str]] | None = None,
) -> DemoApp:
    revision = model_revision(model_dir)
    voice = modeling.load_voice(model_dir)
    folder = Path(synthesized_dir) if synthesized_dir else None
    return DemoApp(
        voice,
        settings,
        normalize,
        revision,
        folder,
        examples=list(examples or []),
        approvals_file=approvals.approvals_path(folder) if folder else None,
    )


def unrecorded_examples(cfg: Config, limit: int = MAX_EXAMPLES) -> list[dict[str, str]]:
    """The first verses of the project nobody recorded: the sentences the voice is for."""
    try:
        verses, _ = missing_verses(source_documents(cfg))
    except PipelineError as exc:
        log.warning("no example sentences: %s", exc)
        return []
    return [{"verse_id": v.verse_id, "text": v.text} for v in verses if v.text.strip()][:limit]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860; 0 = any free port)")
    parser.add_argument("--model_dir", default=None, help="trained model (default: paths.model)")
    parser.add_argument(
        "--checkpoint_dir", default=None, help="training checkpoints (default: paths.checkpoints)"
    )
    parser.add_argument(
        "--synthesized_dir", default=None, help="synthesized verses to list (default: paths.synthesized)"
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    model_dir = resolve_model_dir(
        cfg.flag_or_path(args, "model_dir", "model"),
        cfg.flag_or_path(args, "checkpoint_dir", "checkpoints"),
        cfg.synthesis.checkpoint,
    )
    app = build_app(
        model_dir,
        cfg.flag_or_path(args, "synthesized_dir", "synthesized"),
        cfg.synthesis,
        text_normalizer(cfg.dataset),
        unrecorded_examples(cfg),
    )
    app.rerun = f"tts-pipeline demo --config {cfg.config_path}"
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding to %s: anyone who can reach this machine can use the page", args.host)
    try:
        server = make_server(app, args.host, args.port)
    except OSError as exc:
        raise PipelineError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}; try --port") from None
    host, port = server.server_address[:2]
    serve_until_interrupted(server, f"try the voice at http://{host}:{port}/  (Ctrl-C to stop)")
    return 0
