"""MLflow helpers: a self-contained copy of an HTML page, run names that say what changed."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from tts_pipeline.tracking import self_contained_html


def test_page_copy_carries_its_audio_and_images(tmp_path: Path) -> None:
    report = tmp_path / "report"
    (report / "samples" / "real").mkdir(parents=True)
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt "  # the bytes only have to round-trip
    png = b"\x89PNG\r\n\x1a\nfake"
    (report / "samples" / "real" / "a&b.wav").write_bytes(wav)
    (report / "summary.png").write_bytes(png)
    (tmp_path / "secret.txt").write_text("outside the report")
    page = report / "index.html"
    page.write_text(
        '<img src="summary.png" alt="s"><audio controls src="samples/real/a&amp;b.wav"></audio>'
        "<a href='samples/real/a&amp;b.wav'>download</a> <a href=\"#top\">top</a>"
        '<a href="https://example.org/x.png">web</a> <img src="../secret.txt"> <img src="gone.png">',
        encoding="utf-8",
    )
    text = self_contained_html(page)
    uris = re.findall(r"data:([a-z/]+);base64,([A-Za-z0-9+/=]+)", text)
    assert [mime for mime, _ in uris] == ["image/png", "audio/wav", "audio/wav"]
    assert base64.b64decode(uris[0][1]) == png and base64.b64decode(uris[1][1]) == wav
    # anchors, absolute URLs, paths leaving the folder and missing files stay as they were
    for kept in ('href="#top"', 'href="https://example.org/x.png"', 'src="../secret.txt"', 'src="gone.png"'):
        assert kept in text
    assert "outside the report" not in text
    assert page.read_text(encoding="utf-8").startswith('<img src="summary.png"')  # the file is untouched
