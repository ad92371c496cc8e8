"""`tts-pipeline demo`: a small local web page to try the trained voice.

Type text, pick a speaker, press Speak: the browser POSTs to `/api/synthesize` and plays the
WAV it gets back. The page also lists the verses `synthesize` voiced, with players.

Why the standard library (`http.server.ThreadingHTTPServer`) and not Gradio: no extra
dependency, nothing fetched from the internet by the page, and it runs on the same CPU box
as the rest of the pipeline. It binds to 127.0.0.1 unless `--host` says otherwise.

    GET  /                      the page
    GET  /api/info              speakers, model revision, synthesized verses (JSON)
    POST /api/synthesize        {"text": "...", "speaker": "name or id"} -> audio/wav
    GET  /synthesized/<file>    a synthesized take listed in synthesized/metadata.csv
"""

from __future__ import annotations

import argparse
import html
import io
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from .errors import PipelineError
from .localserver import bind_server, serve_until_interrupted

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config
    from .modeling import LoadedVoice
    from .synthesize import SynthesisSettings

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 2000
MAX_BODY_BYTES = 64 * 1024
CONTENT_TYPES = {".webm": "audio/webm", ".wav": "audio/wav", ".ogg": "audio/ogg", ".mp3": "audio/mpeg"}


@dataclass
class DemoApp:
    """What the handler needs: the voice, how to prepare text, and the synthesized takes."""

    voice: LoadedVoice
    settings: SynthesisSettings
    normalize: Callable[[str], str]
    revision: str = ""
    synthesized_dir: Path | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def speakers(self) -> list[dict[str, Any]]:
        return [
            {"id": sid, "name": str(info.get("name", f"speaker_{sid}")), "hours": info.get("hours")}
            for sid, info in sorted(self.voice.speakers.items())
        ]

    def verses(self) -> list[dict[str, str]]:
        """Rows of synthesized/metadata.csv whose audio exists (empty when nothing was voiced yet)."""
        from .metadata import MetadataError, read_metadata

        if self.synthesized_dir is None:
            return []
        try:
            rows = read_metadata(self.synthesized_dir / "metadata.csv")
        except MetadataError:
            return []
        return [r for r in rows if (self.synthesized_dir / r["file_name"]).is_file()]

    def speak(self, text: str, speaker: str | int | None) -> bytes:
        """WAV bytes of `text` (split and normalised exactly as `synthesize` does)."""
        import numpy as np
        import soundfile as sf

        from .synthesize import NONFINITE_AUDIO, render, text_chunks

        chunks = text_chunks(text, self.settings.max_chars, self.normalize)
        if not chunks:
            raise ValueError("the text is empty after normalisation")
        speaker_id = self.voice.speaker_id(speaker)
        with self.lock:  # one forward pass at a time: torch on CPU already uses every core
            samples = render(self.voice, chunks, speaker_id, self.settings)
        if samples.size == 0:
            raise ValueError("no character of the text is in the model's vocabulary")
        if not np.isfinite(samples).all():  # written as WAV it would be full-scale noise
            raise ValueError(NONFINITE_AUDIO)
        buffer = io.BytesIO()
        sf.write(buffer, samples.clip(-1.0, 1.0), self.voice.sampling_rate, subtype="PCM_16", format="WAV")
        return buffer.getvalue()

    def audio_file(self, name: str) -> Path | None:
        """A synthesized take by its file_name, only if metadata.csv lists it (no path tricks)."""
        for row in self.verses():
            if row["file_name"] == name:
                return self.synthesized_dir / name  # type: ignore[operator]
        return None


def render_page(app: DemoApp) -> str:
    """The HTML page (no external resources)."""
    options = "\n".join(
        f'<option value="{s["id"]}">{html.escape(s["name"])}</option>' for s in app.speakers()
    )
    default = app.voice.speaker_id(None)
    rows = "\n".join(
        "<tr><td>{verse}</td><td>{text}</td><td>{speaker}</td><td>{dur}</td>"
        '<td><audio controls preload="none" src="/synthesized/{src}"></audio></td></tr>'.format(
            verse=html.escape(r.get("verse_id", "")),
            text=html.escape(r.get("transcription", "")),
            speaker=html.escape(r.get("speaker", "")),
            dur=html.escape(r.get("duration_s", "")),
            src=html.escape(r["file_name"], quote=True),
        )
        for r in app.verses()
    )
    table = (
        f"<table><tr><th>verse</th><th>text</th><th>speaker</th><th>s</th><th></th></tr>{rows}</table>"
        if rows
        else "<p>No synthesized verses yet: run <code>tts-pipeline synthesize</code>.</p>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tts-pipeline: try the voice</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }}
textarea {{ width: 100%; font-size: 1.1rem; }}
table {{ border-collapse: collapse; width: 100%; }} td, th {{ border-bottom: 1px solid #ddd; padding: .3rem; text-align: left; }}
#status {{ color: #555; }}
</style></head>
<body>
<h1>Try the voice</h1>
<p>Model revision <code>{html.escape(app.revision)}</code>.</p>
<form id="f">
<textarea id="text" rows="4" maxlength="{MAX_TEXT_CHARS}" placeholder="Type a sentence"></textarea>
<p><label>Speaker <select id="speaker">{options}</select></label>
<button type="submit">Speak</button> <span id="status"></span></p>
</form>
<audio id="player" controls></audio>
<h2>Synthesized verses</h2>
{table}
<script>
document.getElementById("speaker").value = "{default}";
document.getElementById("f").addEventListener("submit", async (event) => {{
  event.preventDefault();
  const status = document.getElementById("status");
  status.textContent = "synthesizing...";
  const response = await fetch("/api/synthesize", {{
    method: "POST", headers: {{"Content-Type": "application/json"}},
    body: JSON.stringify({{text: document.getElementById("text").value,
                          speaker: document.getElementById("speaker").value}})}});
  if (!response.ok) {{ status.textContent = "error: " + (await response.text()); return; }}
  const player = document.getElementById("player");
  player.src = URL.createObjectURL(await response.blob());
  player.play();
  status.textContent = "";
}});
</script>
</body></html>
"""


class DemoHandler(BaseHTTPRequestHandler):
    """Routes the few URLs of the page; `server.app` is the DemoApp."""

    server_version = "tts-pipeline-demo"

    @property
    def app(self) -> DemoApp:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, message.encode("utf-8"), "text/plain; charset=utf-8")

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = unquote(urlparse(self.path).path)
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, render_page(self.app).encode("utf-8"), "text/html; charset=utf-8")
        elif path == "/api/info":
            info = {
                "speakers": self.app.speakers(),
                "default_speaker": self.app.voice.speaker_id(None),
                "model_revision": self.app.revision,
                "sampling_rate": self.app.voice.sampling_rate,
                "verses": self.app.verses(),
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

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if urlparse(self.path).path != "/api/synthesize":
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY_BYTES} bytes")
            return
        try:
            request = json.loads(self.rfile.read(length) or b"{}")
            text = request.get("text") if isinstance(request, dict) else None
            speaker = request.get("speaker") if isinstance(request, dict) else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._error(HTTPStatus.BAD_REQUEST, 'expected JSON: {"text": "...", "speaker": "name or id"}')
            return
        if not isinstance(text, str) or not text.strip():
            self._error(HTTPStatus.BAD_REQUEST, "text is required")
            return
        if len(text) > MAX_TEXT_CHARS:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"text over {MAX_TEXT_CHARS} characters")
            return
        try:
            wav = self.app.speak(text, None if speaker in (None, "") else str(speaker))
        except (PipelineError, ValueError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        except Exception:  # noqa: BLE001 - a failed request must not stop the server
            log.exception("synthesis failed")
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "synthesis failed; see the server log")
            return
        self._send(HTTPStatus.OK, wav, "audio/wav")


def make_server(app: DemoApp, host: str = "127.0.0.1", port: int = 7860) -> ThreadingHTTPServer:
    """A ready (not yet serving) HTTP server for `app`; port 0 picks a free port."""
    server = bind_server(host, port, DemoHandler)
    server.daemon_threads = True
    server.app = app  # type: ignore[attr-defined]
    return server


def build_app(
    model_dir: str | Path,
    synthesized_dir: str | Path | None,
    settings: SynthesisSettings,
    normalize: Callable[[str], str],
) -> DemoApp:
    from .modeling import load_voice
    from .synthesize import model_revision

    revision = model_revision(model_dir)
    voice = load_voice(model_dir)
    return DemoApp(voice, settings, normalize, revision, Path(synthesized_dir) if synthesized_dir else None)


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
    from .synthesize import SynthesisSettings, resolve_model_dir, text_normalizer

    model_dir = resolve_model_dir(
        args.model_dir or cfg.paths.model,
        args.checkpoint_dir or cfg.paths.checkpoints,
        cfg.synthesis.checkpoint,
    )
    app = build_app(
        model_dir,
        args.synthesized_dir or cfg.paths.synthesized,
        SynthesisSettings.from_config(cfg.synthesis),
        text_normalizer(cfg.dataset),
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding to %s: anyone who can reach this machine can use the page", args.host)
    try:
        server = make_server(app, args.host, args.port)
    except OSError as exc:
        raise PipelineError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}; try --port") from None
    host, port = server.server_address[:2]
    serve_until_interrupted(server, f"try the voice at http://{host}:{port}/  (Ctrl-C to stop)")
    return 0
