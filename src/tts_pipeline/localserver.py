"""Serving a local page until Ctrl-C: shared by `speakers review` and `demo`.

Both commands start a stdlib HTTP server on this machine, print where to find it and keep
serving until the user stops them; the port must be released on the way out either way.
"""

from __future__ import annotations

import errno
import http.server
import socketserver
from typing import Any

from .errors import PipelineError


class PageHandler(http.server.BaseHTTPRequestHandler):
    """Request handler base of the local pages: one way to send a response, never cached."""

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def bind_server(
    host: str, port: int, handler: Any, server_class: type[http.server.ThreadingHTTPServer] = http.server.ThreadingHTTPServer
) -> http.server.ThreadingHTTPServer:
    """Bind a local HTTP server, turning "port in use" and friends into one line that suggests --port.

    Every local server (`speakers review`, `demo`) binds through here so none of them shows a
    traceback for the most common mistake: a second copy still running on the same port.
    """
    try:
        return server_class((host, port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            why = "the port is already in use (another server, perhaps an earlier run, is listening)"
        elif exc.errno == errno.EACCES:
            why = "permission denied (ports below 1024 need root)"
        else:
            why = exc.strerror or str(exc)
        raise PipelineError(
            f"cannot listen on {host}:{port}: {why}; choose another port with --port N (0 = any free port)"
        ) from None


def serve_until_interrupted(
    server: socketserver.BaseServer, banner: str, open_url: str | None = None
) -> None:
    """Print `banner`, open `open_url` in a browser if given, serve until Ctrl-C, then close.

    Ctrl-C is the normal way to stop, so it ends the call quietly instead of with a traceback.
    """
    print(banner, flush=True)
    if open_url:
        import webbrowser

        webbrowser.open(open_url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
