"""The one content-addressed cache (`tts_pipeline.cache`): data first, then its marker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tts_pipeline.cache import ContentCache

KEY = "ab" + "0" * 62


def test_put_then_get_is_a_hit_with_data_and_facts(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path, ".wav")
    cache.put(KEY, {"duration_s": 1.5}, b"RIFF-audio")
    hit = cache.get(KEY)
    assert hit is not None and hit.meta == {"duration_s": 1.5}
    assert hit.data == tmp_path / "ab" / f"{KEY}.wav" and hit.data.read_bytes() == b"RIFF-audio"
    assert [p.name for p in (tmp_path / "ab").iterdir() if p.name.endswith(".part")] == []


def test_writer_callback_and_facts_only_entries(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path, ".npy")
    cache.put(KEY, {"n": 1}, write=lambda path: path.write_bytes(b"1234"))
    assert cache.get(KEY).data.read_bytes() == b"1234"  # type: ignore[union-attr]
    other = "cd" + "1" * 62
    cache.put(other, {"error": "corrupt"})  # e.g. preprocess remembers a decode error
    hit = cache.get(other)
    assert hit is not None and hit.data is None and hit.meta == {"error": "corrupt"}


def test_absent_key_is_a_miss(tmp_path: Path) -> None:
    assert ContentCache(tmp_path, ".wav").get(KEY) is None
    assert ContentCache(tmp_path / "never-made", ".wav").get(KEY) is None


@pytest.mark.parametrize(
    "damage",
    ["marker cut short", "marker not an object", "marker without size", "data missing", "data cut short"],
)
def test_a_damaged_entry_is_a_miss_and_put_repairs_it(tmp_path: Path, damage: str) -> None:
    cache = ContentCache(tmp_path, ".wav")
    cache.put(KEY, {"duration_s": 2.0}, b"0123456789")
    data, marker = cache.paths(KEY)
    if damage == "marker cut short":
        marker.write_text('{"duration_s": 2.0, "si')
    elif damage == "marker not an object":
        marker.write_text("[1, 2]")
    elif damage == "marker without size":
        marker.write_text(json.dumps({"duration_s": 2.0}))  # an entry of the layout before the helper
    elif damage == "data missing":
        data.unlink()
    else:
        data.write_bytes(b"01234")
    assert cache.get(KEY) is None
    cache.put(KEY, {"duration_s": 2.0}, b"0123456789")
    assert cache.get(KEY) is not None


def test_crash_between_data_and_marker_is_a_miss(tmp_path: Path, monkeypatch) -> None:
    """The data is renamed into place, then the process dies before the marker is written."""
    import tts_pipeline.cache as cache_module

    def die(path, text):
        raise KeyboardInterrupt("killed before the marker")

    monkeypatch.setattr(cache_module, "atomic_write_text", die)
    cache = ContentCache(tmp_path, ".wav")
    with pytest.raises(KeyboardInterrupt):
        cache.put(KEY, {"duration_s": 1.0}, b"audio")
    data, marker = cache.paths(KEY)
    assert data.is_file() and not marker.exists()
    assert cache.get(KEY) is None


def test_crash_while_writing_data_leaves_nothing_behind(tmp_path: Path) -> None:
    def half_then_die(path: Path) -> None:
        path.write_bytes(b"half")
        raise KeyboardInterrupt("killed while writing")

    cache = ContentCache(tmp_path, ".wav")
    with pytest.raises(KeyboardInterrupt):
        cache.put(KEY, {}, write=half_then_die)
    assert list((tmp_path / "ab").iterdir()) == []
    assert cache.get(KEY) is None


def test_size_is_a_reserved_marker_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        ContentCache(tmp_path, ".wav").put(KEY, {"size": 3}, b"abc")
