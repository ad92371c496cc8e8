"""The review server's corrections editor: each click becomes the YAML the docs describe."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from browser_helpers import serving

from tts_pipeline.speakers import load_corrections
from tts_pipeline.speakers.review_edit import CorrectionsEditor, EditError, ReviewState
from tts_pipeline.speakers.review_server import ReviewServerApp, make_review_app_server

# Last run: speaker 0 = Maria (named), 1 and 2 automatic.
CLIPS = {
    "audio/a1.wav": (0, 1.0),
    "audio/a2.wav": (0, 0.9),
    "audio/b1.wav": (1, 0.8),
    "audio/b2.wav": (1, 0.95),
    "audio/b3.wav": (1, 0.5),
    "audio/c1.wav": (2, 0.7),
    "audio/c2.wav": (2, 0.6),
}
NAMES = {0: "Maria", 1: "speaker_1", 2: "speaker_2"}
TEXT = """# Our readers
speakers:
  Maria:  # the first reader
    anchors:
      - audio/a1.wav   # clear voice
"""


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    doc = {
        "clips": {
            c: {"speaker_id": s, "confidence": conf, "uncertain": False} for c, (s, conf) in CLIPS.items()
        },
        "speakers": {str(k): {"name": v, "clips": 0, "hours": 0.0} for k, v in NAMES.items()},
    }
    (tmp_path / "speaker_ids.json").write_text(json.dumps(doc), encoding="utf-8")
    (tmp_path / "review.html").write_text("<!DOCTYPE html><title>r</title>", encoding="utf-8")
    (tmp_path / "xx.speakers.yaml").write_text(TEXT, encoding="utf-8")
    return tmp_path


def _edit(run_dir: Path, **request) -> dict:
    editor = CorrectionsEditor(run_dir / "xx.speakers.yaml", ReviewState.read(run_dir))
    editor.apply(request)
    editor.save()
    return yaml.safe_load((run_dir / "xx.speakers.yaml").read_text(encoding="utf-8"))["speakers"]


def test_rename_keeps_comments_position_and_backs_up(run_dir: Path) -> None:
    speakers = _edit(run_dir, action="rename", speaker=1, name="Jonas")
    assert speakers["Jonas"] == {"anchors": ["audio/b2.wav", "audio/b1.wav"]}  # clearest clips anchor it
    speakers = _edit(run_dir, action="rename", speaker=0, name="Maria Lopez")
    text = (run_dir / "xx.speakers.yaml").read_text(encoding="utf-8")
    assert text.startswith("# Our readers\nspeakers:\n  Maria Lopez: # the first reader\n")
    assert "- audio/a1.wav   # clear voice" in text
    assert list(speakers) == ["Maria Lopez", "Jonas"]
    assert "Jonas" in (run_dir / "xx.speakers.yaml.bak").read_text(encoding="utf-8")
    assert [s.name for s in load_corrections(run_dir / "xx.speakers.yaml").speakers] == [
        "Maria Lopez",
        "Jonas",
    ]


def test_merge_named_and_automatic_speakers(run_dir: Path) -> None:
    speakers = _edit(run_dir, action="merge", speaker=2, into=0)
    assert speakers["Maria"]["anchors"] == ["audio/a1.wav", "audio/c1.wav"]
    _edit(run_dir, action="rename", speaker=1, name="Jonas")
    speakers = _edit(run_dir, action="merge", speaker=0, into=1)
    assert list(speakers) == ["Jonas"]
    assert set(speakers["Jonas"]["anchors"]) == {
        "audio/b2.wav",
        "audio/b1.wav",
        "audio/a1.wav",
        "audio/c1.wav",
    }
    with pytest.raises(EditError, match="already one speaker"):
        _edit(run_dir, action="merge", speaker=2, into=1)


def test_move_pin_and_split(run_dir: Path) -> None:
    speakers = _edit(run_dir, action="move", clip="audio/a1.wav", speaker=1)
    # Maria lost her only anchor: another of her clips keeps her cluster named.
    assert speakers["Maria"] == {"anchors": ["audio/a2.wav"]}
    assert speakers["speaker_1"]["clips"] == ["audio/a1.wav"]
    speakers = _edit(run_dir, action="pin", clip="audio/c2.wav")
    assert speakers["speaker_2"]["clips"] == ["audio/c2.wav"]
    speakers = _edit(run_dir, action="split", clip="audio/b3.wav", name="Ruth")
    assert speakers["Ruth"] == {"clips": ["audio/b3.wav"]}
    load_corrections(run_dir / "xx.speakers.yaml")  # still a valid corrections file


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"action": "rename", "speaker": 1, "name": "Maria"}, "already a speaker called Maria"),
        ({"action": "rename", "speaker": 1, "name": " "}, "give the speaker a name"),
        ({"action": "rename", "speaker": 9, "name": "X"}, "no speaker 9"),
        ({"action": "move", "clip": "../etc/passwd", "speaker": 1}, "no clip"),
        ({"action": "split", "clip": "audio/b1.wav", "name": "- x"}, "YAML symbol"),
        ({"action": "explode"}, "unknown action"),
        ({"action": "merge", "speaker": 1}, "missing or bad field"),
    ],
)
def test_bad_edits_are_refused_and_the_file_untouched(run_dir: Path, request_, message) -> None:
    with pytest.raises(EditError, match=message):
        _edit(run_dir, **request_)
    assert (run_dir / "xx.speakers.yaml").read_text(encoding="utf-8") == TEXT
    assert not (run_dir / "xx.speakers.yaml.bak").exists()


@pytest.mark.parametrize("text", ["speakers: [a, b]\n", "speakers:\n  - x: [\n", "\xff\xfe"])
def test_an_unreadable_corrections_file_is_left_alone(run_dir: Path, text: str) -> None:
    (run_dir / "xx.speakers.yaml").write_bytes(text.encode("latin-1"))
    with pytest.raises(EditError, match="fix the file by hand"):
        _edit(run_dir, action="rename", speaker=1, name="Jo")
    assert (run_dir / "xx.speakers.yaml").read_bytes() == text.encode("latin-1")


def test_an_empty_entry_gets_the_clip(run_dir: Path) -> None:
    (run_dir / "xx.speakers.yaml").write_text("speakers:\n  Maria:\n", encoding="utf-8")
    speakers = _edit(run_dir, action="pin", clip="audio/a2.wav")
    assert speakers["Maria"] == {"clips": ["audio/a2.wav"]}


def test_pinning_the_only_clip_of_a_speaker(run_dir: Path) -> None:
    doc = json.loads((run_dir / "speaker_ids.json").read_text(encoding="utf-8"))
    doc["clips"]["audio/d1.wav"] = {"speaker_id": 3, "confidence": 0.4, "uncertain": True}
    doc["speakers"]["3"] = {"name": "speaker_3", "clips": 1, "hours": 0.0}
    (run_dir / "speaker_ids.json").write_text(json.dumps(doc), encoding="utf-8")
    speakers = _edit(run_dir, action="pin", clip="audio/d1.wav")
    assert speakers["speaker_3"] == {"clips": ["audio/d1.wav"]}


def test_a_missing_corrections_file_is_created(run_dir: Path) -> None:
    (run_dir / "xx.speakers.yaml").unlink()
    speakers = _edit(run_dir, action="rename", speaker=2, name="Ana")
    assert speakers == {"Ana": {"anchors": ["audio/c1.wav", "audio/c2.wav"]}}
    assert (run_dir / "xx.speakers.yaml").read_text(encoding="utf-8").startswith("# Speaker corrections")


def _request(url: str, body: bytes | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_server_api(run_dir: Path) -> None:
    (run_dir / "audio").mkdir()
    (run_dir / "audio" / "a1.wav").write_bytes(b"RIFF....")
    app = ReviewServerApp(
        run_dir, run_dir / "xx.speakers.yaml", run_dir, "tts-pipeline speakers --config xx.yaml"
    )
    with serving(make_review_app_server(app)) as url:
        assert _request(url + "audio/audio/a1.wav") == (200, b"RIFF....")  # audio/<file_name>
        assert _request(url + "audio/audio/../speaker_ids.json")[0] == 404
        assert _request(url + "audio/audio/b1.wav")[0] == 404  # listed but no file
        status, body = _request(url + "api/edit", b"not json")
        assert status == 400 and "bad request" in json.loads(body)["error"]
        status, body = _request(
            url + "api/edit", json.dumps({"action": "rename", "speaker": 1, "name": "Jo"}).encode()
        )
        reply = json.loads(body)
        assert status == 200 and reply["rerun"] == "tts-pipeline speakers --config xx.yaml"
        assert reply["backup"].endswith("xx.speakers.yaml.bak") and "Jo:" in reply["corrections"]
        state = json.loads(_request(url + "api/state")[1])
        assert "Jo:" in state["corrections"] and state["speakers"]["1"] == "speaker_1"
