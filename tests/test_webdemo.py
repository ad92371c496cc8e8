"""The try-it page: a real HTTP server on 127.0.0.1 answering a synthesis request with WAV."""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request

import pytest
import soundfile as sf
from helpers import DEMO_PROJECT
from synth_helpers import shared_tiny_model

from tts_pipeline import synthesize, voice, webdemo
from tts_pipeline.config import SynthesisSection
from tts_pipeline.verses import local_documents, missing_verses


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("webdemo")
    model = shared_tiny_model(tmp_path_factory)
    settings = SynthesisSection(speaking_rate=4.0)
    verses, _ = missing_verses(local_documents(DEMO_PROJECT))
    synthesize.synthesize_verses(verses[:1], model, tmp / "synthesized", settings, None, progress=False)
    app = webdemo.build_app(model, tmp / "synthesized", settings, voice.text_normalizer(None))
    httpd = webdemo.make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", tmp
    httpd.shutdown()
    httpd.server_close()


def _post(url: str, payload: object, route: str = "/api/synthesize") -> tuple[int, str, bytes]:
    request = urllib.request.Request(
        url + route,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_page_lists_speakers_and_synthesized_verses(server) -> None:
    url, tmp = server
    status, body = _get(url + "/")
    page = body.decode()
    assert status == 200 and "Diane" in page and "Sheila" in page
    assert "It is a long way from Texas to New Jersey, isn&#39;t it?" in page  # escaped
    assert 'src="/synthesized/audio/LUK_001_007.webm"' in page
    status, data = _get(url + "/synthesized/audio/LUK_001_007.webm")
    assert status == 200 and data == (tmp / "synthesized/audio/LUK_001_007.webm").read_bytes()
    assert _get(url + "/synthesized/../metadata.csv")[0] == 404
    assert _get(url + "/synthesized/audio/MRK_001_009.webm")[0] == 404  # not voiced: not listed
    info = json.loads(_get(url + "/api/info")[1])
    assert info["default_speaker"] == 1 and [s["name"] for s in info["speakers"]] == ["Diane", "Sheila"]


def test_synthesis_request_returns_playable_wav(server) -> None:
    url, _ = server
    status, content_type, body = _post(url, {"text": "Hello there. How are you?", "speaker": "Diane"})
    assert status == 200 and content_type == "audio/wav"
    samples, rate = sf.read(io.BytesIO(body))
    assert rate == 16000 and samples.size / rate > 0.1 and abs(samples).max() > 0
    # same request, same audio (seeded); another speaker, other audio
    assert _post(url, {"text": "Hello there. How are you?", "speaker": "Diane"})[2] == body
    assert _post(url, {"text": "Hello there. How are you?", "speaker": "1"})[2] != body


def test_bad_requests_are_answered_not_crashed(server) -> None:
    url, _ = server
    status, _, body = _post(url, {"text": "hi", "speaker": "Nobody"})
    assert status == 400 and b"Nobody" in body
    assert _post(url, {"text": "   "})[0] == 400
    assert _post(url, {"text": "x" * (webdemo.MAX_TEXT_CHARS + 1)})[0] == 413
    assert _post(url, ["not", "an", "object"])[0] == 400
    assert _post(url, {"text": "hello"})[0] == 200  # still serving; default speaker


def test_check_lists_what_the_model_drops_before_synthesis(server) -> None:
    url, _ = server
    status, _, body = _post(url, {"text": "Ẹ kú àárọ̀, friend"}, "/api/check")
    info = json.loads(body)
    assert status == 200 and info["model_input"] == "k r, friend"
    assert {"ẹ", "ú", "à", "á", "ọ"} <= set(info["dropped"])


def test_rate_and_noise_are_checked_and_change_the_audio(server) -> None:
    url, _ = server
    status, _, slow = _post(url, {"text": "hello there", "speaking_rate": 0.5})
    status2, _, fast = _post(url, {"text": "hello there", "speaking_rate": 2.0})
    assert status == status2 == 200 and len(slow) > len(fast)
    status, _, body = _post(url, {"text": "hello", "noise": 9})
    assert status == 400 and b"noise" in body


def test_approval_of_an_unknown_take_is_refused(server) -> None:
    url, tmp = server
    status, _, body = _post(
        url, {"verse_id": "GEN 1:1", "model_revision": "x", "verdict": "approved"}, "/api/approval"
    )
    assert status == 400 and b"no synthesized take" in body
    assert not (tmp / "synthesized.approvals.json").exists()


def test_approval_is_required_by_default_for_gitlab_only(tmp_path) -> None:
    from synth_helpers import write_config

    from tts_pipeline.approvals import required
    from tts_pipeline.config import load_config

    local = load_config(write_config(tmp_path, tmp_path, tmp_path))
    assert not required(local)
    gitlab = {"type": "gitlab", "url": "https://gitlab.example", "project": "team/x"}
    (tmp_path / "g").mkdir()
    assert required(load_config(write_config(tmp_path / "g", tmp_path, tmp_path, source=gitlab)))
    (tmp_path / "h").mkdir()
    cfg = load_config(
        write_config(tmp_path / "h", tmp_path, tmp_path, source=gitlab, synthesis={"require_approval": False})
    )
    assert not required(cfg)
