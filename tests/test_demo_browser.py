"""The try-it page in a real browser: examples, busy state, warnings, errors, approvals.

A tiny untrained two-speaker model (synth_helpers) voices the demo project's unrecorded verses;
Chromium drives the page served by `webdemo`; the approvals it saves gate `--write-back`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from browser_helpers import browser, open_page, screenshot, serving  # noqa: F401 - fixture
from helpers import PARAMS
from synth_helpers import copy_demo_project, shared_tiny_model, write_config

from tts_pipeline import cli, voice, webdemo
from tts_pipeline.approvals import approvals_path
from tts_pipeline.config import load_config


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A demo project copy, its config (approval required) and its voiced unrecorded verses."""
    tmp = tmp_path_factory.mktemp("demo-browser")
    model = shared_tiny_model(tmp_path_factory)
    project = copy_demo_project(tmp / "project")
    config = write_config(tmp, project, model, synthesis={"speaking_rate": 4.0, "require_approval": True})
    assert cli.main(["synthesize", "--config", str(config), "--params", str(PARAMS)]) == 0
    return {"tmp": tmp, "model": model, "project": project, "config": config}


def _app(demo: dict) -> webdemo.DemoApp:
    cfg = load_config(demo["config"], PARAMS)
    return webdemo.build_app(
        demo["model"],
        cfg.paths.synthesized,
        cfg.synthesis,
        voice.text_normalizer(cfg.dataset),
        webdemo.unrecorded_examples(cfg),
    )


def test_try_it_page_warns_shows_busy_state_and_plays_audio(browser, demo):  # noqa: F811 - fixture
    app = _app(demo)
    assert [e["verse_id"] for e in app.examples] == ["LUK 1:7", "MRK 1:9", "MRK 1:10"]
    with serving(webdemo.make_server(app, "127.0.0.1", 0)) as url, open_page(browser) as (page, _):
        page.goto(url)
        # A sentence the model cannot say fully: the warning names the characters before synthesis.
        page.fill("#text", "Ẹ kú àárọ̀")
        page.wait_for_selector("#warning:not([hidden])")
        warning = page.inner_text("#warning")
        assert "drop" in warning and "ẹ" in warning and "à" in warning
        assert page.inner_text("#model-input") == "k r"  # only what the tokenizer keeps
        # An example verse; the server is held busy so the page's busy state can be seen.
        page.click("button.example >> nth=1")
        assert page.input_value("#text").startswith(app.examples[1]["text"][:20])
        page.wait_for_function("() => document.querySelector('#warning').hidden")
        page.fill("#rate", "1.5")
        with app.lock:
            page.click("#speak")
            page.wait_for_selector("#f[aria-busy=true]")
            assert page.is_disabled("#speak") and "Synthesizing" in page.inner_text("#status")
        page.wait_for_function("() => document.querySelector('#status').textContent === 'Done.'")
        duration = page.evaluate(
            """() => new Promise(done => { const p = document.querySelector('#player');
               if (p.readyState >= 1) done(p.duration); else p.onloadedmetadata = () => done(p.duration); })"""
        )
        assert duration > 0.05  # Chromium decoded it: playable audio
        assert not page.is_disabled("#speak")
        with page.expect_download() as download:
            page.click("#download")
        assert download.value.suggested_filename == "MRK_1_9.wav"
        assert Path(download.value.path()).read_bytes()[:4] == b"RIFF"
        screenshot(page, "try-it-after-speak")


def test_try_it_page_reports_a_stopped_server(browser, demo):  # noqa: F811 - fixture
    server = webdemo.make_server(_app(demo), "127.0.0.1", 0)
    with serving(server) as url, open_page(browser, expect_errors=True) as (page, errors):
        page.goto(url)
        page.fill("#text", "hello there")
        page.wait_for_selector("#model-input:has-text('hello there')")
        server.shutdown()
        server.server_close()
        page.click("#speak")
        page.wait_for_selector("#status.error")
        assert "not reachable" in page.inner_text("#status") and "tts-pipeline demo" in page.inner_text(
            "#status"
        )
        assert not page.is_disabled("#speak")
        screenshot(page, "try-it-server-stopped")
    # The only console errors are the refused connections themselves.
    assert errors.messages and all("ERR_CONNECTION_REFUSED" in m for m in errors.messages), errors.messages


def test_try_it_page_gives_up_after_its_time_out(browser, demo, monkeypatch):  # noqa: F811 - fixture
    monkeypatch.setattr(webdemo, "REQUEST_TIMEOUT_S", 1)
    app = _app(demo)
    with serving(webdemo.make_server(app, "127.0.0.1", 0)) as url, open_page(browser) as (page, _):
        page.goto(url)
        page.fill("#text", "hello")
        with app.lock:  # the server is stuck on another request
            page.click("#speak")
            page.wait_for_selector("#status.error")
        assert "No answer after 1 s" in page.inner_text("#status") and not page.is_disabled("#speak")


def test_approvals_persist_and_gate_write_back(browser, demo, capsys):  # noqa: F811 - fixture
    app = _app(demo)
    with serving(webdemo.make_server(app, "127.0.0.1", 0)) as url, open_page(browser) as (page, _):
        page.goto(url)
        assert page.inner_text("#counts") == "0 approved, 0 rejected, 3 waiting."
        page.click('#verses tr[data-verse="LUK 1:7"] button.approve')
        page.click('#verses tr[data-verse="MRK 1:9"] button.reject')
        page.wait_for_function(
            "() => document.querySelector('#counts').textContent.startsWith('1 approved, 1 rejected')"
        )
        page.reload()
        verdicts = dict(zip(
            page.locator("#verses tr.take td:first-child").all_inner_texts(),
            page.locator("#verses td.verdict").all_inner_texts(),
            strict=True,
        ))  # fmt: skip
        assert verdicts == {"LUK 1:7": "approved", "MRK 1:9": "rejected", "MRK 1:10": "waiting"}
        screenshot(page, "try-it-approvals")
    saved = json.loads(approvals_path(app.synthesized_dir).read_text(encoding="utf-8"))["takes"]
    assert {v["verse_id"]: v["verdict"] for v in saved.values()} == {
        "LUK 1:7": "approved",
        "MRK 1:9": "rejected",
    }
    assert all(v["model_revision"] == app.revision for v in saved.values())

    capsys.readouterr()
    args = ["synthesize", "--config", str(demo["config"]), "--params", str(PARAMS), "--write-back"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "1 approved take(s); 1 waiting for review, 1 rejected" in out
    assert "added 1 synthetic take(s)" in out
    assert cli.main([*args, "--dry-run"]) == 0
    assert "1 of 3 take(s) approved" in capsys.readouterr().out
