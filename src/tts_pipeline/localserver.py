"""Serving a local page until Ctrl-C: shared by `speakers review` and `demo`.

Both commands start a stdlib HTTP server on this machine, print where to find it and keep
serving until the user stops them; the port must be released on the way out either way.
"""

from __future__ import annotations

import socketserver


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
