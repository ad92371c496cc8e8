"""The shared serve-until-Ctrl-C loop of `speakers review` and `demo`, on a real local server."""

from __future__ import annotations

import _thread
import functools
import http.server
import signal
import threading
import urllib.request

from tts_pipeline.localserver import serve_until_interrupted


def _server(directory) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    return http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)


def test_serves_until_ctrl_c_then_releases_the_port(tmp_path, capsys):
    # interrupt_main does nothing unless SIGINT has a Python handler; an earlier test in the same
    # process may have left another one (one CI run hung here for 15 min), so set Python's own
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    (tmp_path / "page.html").write_text("<html>ok</html>", encoding="utf-8")
    server = _server(tmp_path)
    url = f"http://127.0.0.1:{server.server_address[1]}/page.html"
    got: list[bytes] = []
    returned = threading.Event()
    watchdog_stopped_it: list[bool] = []

    def visit_then_press_ctrl_c() -> None:
        with urllib.request.urlopen(url, timeout=10) as response:
            got.append(response.read())
        _thread.interrupt_main()  # what Ctrl-C does to the main thread
        if not returned.wait(30):  # never hang the suite: stop the server, and fail below
            watchdog_stopped_it.append(True)
            server.shutdown()

    threading.Thread(target=visit_then_press_ctrl_c, daemon=True).start()
    try:
        serve_until_interrupted(server, f"page: {url}  (Ctrl-C to stop)")  # returns instead of raising
    finally:
        returned.set()
        signal.signal(signal.SIGINT, previous)
    assert not watchdog_stopped_it, "Ctrl-C did not stop the server"
    assert got == [b"<html>ok</html>"]
    assert capsys.readouterr().out == f"page: {url}  (Ctrl-C to stop)\n"
    assert server.socket.fileno() == -1  # closed: the port is free again


def test_a_normal_shutdown_also_closes_the_server(tmp_path):
    server = _server(tmp_path)
    threading.Timer(0.2, server.shutdown).start()
    serve_until_interrupted(server, "banner")
    assert server.socket.fileno() == -1


def _busy_port():
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    return holder, holder.getsockname()[1]


def test_speakers_review_on_a_busy_port_is_one_line_suggesting_port(tmp_path, capsys):
    import pytest

    from tts_pipeline.errors import PipelineError
    from tts_pipeline.speakers import make_review_server
    from tts_pipeline.speakers.review_server import make_review_app_server

    holder, port = _busy_port()
    with holder:
        for make in (lambda: make_review_app_server(None, port), lambda: make_review_server(tmp_path, port)):
            with pytest.raises(PipelineError) as info:
                make()
            err = str(info.value)
            assert "\n" not in err and f"127.0.0.1:{port}" in err and "already in use" in err and "--port" in err


def test_demo_server_on_a_busy_port_is_a_pipeline_error_suggesting_port():
    import pytest

    from tts_pipeline.errors import PipelineError
    from tts_pipeline.webdemo import make_server

    holder, port = _busy_port()
    with holder, pytest.raises(PipelineError, match=r"already in use.*--port"):
        make_server(None, "127.0.0.1", port)
