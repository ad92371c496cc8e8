"""The speaker review page in a real browser: corrections made by clicking reach the file.

A small real corpus (3 LibriSpeech readers x 4 clips), the real speakers stage, the review
server, and Chromium clicking rename and move; then the stage runs again on the written file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from browser_helpers import browser, open_page, screenshot, serving  # noqa: F401 - fixture

from tts_pipeline import speakers as sp
from tts_pipeline.audio import decode_audio, write_wav
from tts_pipeline.speakers.review_server import ReviewServerApp, make_review_app_server

DATA = Path(__file__).parent / "data" / "librispeech-6spk"
READERS = ("1998", "2033", "3080")
HEADER = "# Our readers (kept by the review page)\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("preprocessed")
    (root / "audio").mkdir()
    rows = []
    for reader in READERS:
        for webm in sorted((DATA / reader).glob("*.webm"))[:4]:
            write_wav(root / "audio" / f"{webm.stem}.wav", decode_audio(webm, 16000), 16000)
            rows.append((f"audio/{webm.stem}.wav", f"words of <b>{webm.stem}</b>"))
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "transcription"])
        writer.writerows(rows)
    return root


def _run(corpus: Path, out: Path, corrections: Path, embedder, cache: Path) -> dict:
    sp.run_speakers(
        corpus / "metadata.csv",
        corpus,
        out,
        method="kmeans",
        min_speakers=3,
        max_speakers=3,
        corrections_file=corrections,
        cache_root=cache,
        embedder=embedder,
        review_clips=2,
    )
    return json.loads((out / "speaker_ids.json").read_text(encoding="utf-8"))


def _names(doc: dict) -> dict[str, str]:
    return {clip: doc["speakers"][str(v["speaker_id"])]["name"] for clip, v in doc["clips"].items()}


def test_rename_and_move_in_the_page_land_in_the_file_and_survive_a_rerun(
    browser,  # noqa: F811 - fixture
    corpus,
    embedder,
    tmp_path,
):
    out, cache = tmp_path / "speakers", tmp_path / "cache"
    corrections = tmp_path / "xx.speakers.yaml"
    corrections.write_text(HEADER, encoding="utf-8")
    first = _run(corpus, out, corrections, embedder, cache)
    before = _names(first)
    renamed = first["clips"][next(c for c in before if "2033-" in c)]["speaker_id"]
    moved = next(c for c in sorted(before) if first["clips"][c]["speaker_id"] != renamed)
    app = ReviewServerApp(out, corrections, corpus, "tts-pipeline speakers --config xx.yaml")
    with serving(make_review_app_server(app)) as url, open_page(browser) as (page, _):
        page.goto(url + "review.html")
        page.wait_for_selector("body.interactive")
        assert page.is_visible("#live") and not page.is_visible("#mode")
        # The clip table: headers, transcripts (escaped), uncertain first.
        headers = page.locator("#clips thead th").all_inner_texts()
        assert headers[:6] == ["play", "clip", "transcript", "speaker", "duration", "confidence"]
        assert "<b>" in page.locator("#clips tbody tr").first.inner_text()
        uncertain = [r.locator(".uncertain").count() > 0 for r in page.locator("#clips tbody tr").all()]
        assert uncertain == sorted(uncertain, reverse=True)
        # Keyboard playback: arrow down selects the first clip and plays it from the server.
        page.locator("h1").click()
        page.keyboard.press("ArrowDown")
        first_row = page.locator("#clips tbody tr").first
        page.wait_for_function("() => !document.querySelector('#clips tbody tr audio').paused")
        assert "selected" in first_row.get_attribute("class")
        page.keyboard.press(" ")
        page.wait_for_function("() => document.querySelector('#clips tbody tr audio').paused")

        row = page.locator(f'#summary tr[data-speaker="{renamed}"]')
        row.locator("input.rename-name").fill("Maria")
        row.locator("button.rename").click()
        page.wait_for_selector("#saved:not([hidden])")
        assert "Re-run `tts-pipeline speakers --config xx.yaml`" in page.inner_text("#saved")

        clip_row = page.locator(f'#clips tr[data-file="{moved}"]')
        clip_row.locator("select.move-to").select_option(str(renamed))
        clip_row.locator("button.move").click()
        page.wait_for_function(f"() => document.querySelector('#saved').textContent.includes('{moved}')")
        screenshot(page, "speaker-review-after-move")

    text = corrections.read_text(encoding="utf-8")
    assert text.startswith(HEADER)  # comments kept
    assert corrections.with_name(corrections.name + ".bak").is_file()
    doc = yaml.safe_load(text)
    assert moved in doc["speakers"]["Maria"]["clips"] and doc["speakers"]["Maria"]["anchors"]

    second = _names(_run(corpus, out, corrections, embedder, cache))
    expected = {c for c, s in first["clips"].items() if s["speaker_id"] == renamed} | {moved}
    assert {c for c, name in second.items() if name == "Maria"} == expected


def test_static_page_from_disk_is_read_only_with_copy_paste_instructions(
    browser,  # noqa: F811 - fixture
    corpus,
    embedder,
    tmp_path,
):
    out = tmp_path / "speakers"
    _run(corpus, out, tmp_path / "none.speakers.yaml", embedder, tmp_path / "cache")
    with open_page(browser) as (page, _):
        page.goto((out / "review.html").as_uri())
        page.wait_for_load_state("load")
        assert page.is_visible("#mode") and not page.is_visible("button.rename")
        assert "anchors:" in page.inner_text("#corrections")
        page.locator("h1").click()
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        assert page.locator("#clips tbody tr.selected").count() == 1
        screenshot(page, "speaker-review-static")
