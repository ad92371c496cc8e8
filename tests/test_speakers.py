"""speakers stage on real speech: 60 LibriSpeech clips by 6 readers (labels = folder names).

Held-out protocol: the few constants in speakers/clustering.py (single-speaker silhouette threshold,
confidence temperature) were chosen looking only at clips 0000-0004 of each reader; the
accuracy tests below assert on clips 0005-0009, which nothing was tuned on, and on all 60.
Embeddings are computed once per module (and cached by content hash like the stage does).
"""

from __future__ import annotations

import base64
import csv
import json
import random
import threading
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import adjusted_rand_score

from tts_pipeline import speakers as sp
from tts_pipeline.audio import decode_audio, write_wav
from tts_pipeline.errors import PipelineError

DATA = Path(__file__).parent / "data" / "librispeech-6spk"


def _write_metadata(path: Path, file_names: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "transcription"])
        writer.writerows([(name, "text") for name in file_names])


def reader(file_name: str) -> str:
    return Path(file_name).name.split("-")[0]


def clip_index(file_name: str) -> int:
    return int(Path(file_name).stem.split("-")[-1])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A preprocessed-stage directory: audio/<stem>.wav (16 kHz mono) + metadata.csv."""
    root = tmp_path_factory.mktemp("preprocessed")
    (root / "audio").mkdir()
    names = []
    for webm in sorted(DATA.glob("*/*.webm")):
        write_wav(root / "audio" / f"{webm.stem}.wav", decode_audio(webm, 16000), 16000)
        names.append(f"audio/{webm.stem}.wav")
    _write_metadata(root / "metadata.csv", names)
    return root


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache") / "speakers"  # as the stage makes it: <paths.cache>/speakers


@pytest.fixture(scope="module")
def embedded(corpus, embedder, cache_root):
    clips = sp.load_clips(corpus / "metadata.csv", corpus)
    X = sp.embed_clips(clips, embedder, cache_root, "resemblyzer")
    return clips, X


def _subset(embedded, keep):
    clips, X = embedded
    idx = [i for i, c in enumerate(clips) if keep(c.file_name)]
    return [clips[i] for i in idx], X[idx]


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("method", ["auto", "hdbscan", "kmeans"])
@pytest.mark.parametrize("part", ["held_out", "all"])
def test_automatic_speaker_count_and_ari(embedded, method, part):
    clips, X = _subset(embedded, lambda f: part == "all" or clip_index(f) >= 5)
    clustering = sp.cluster_embeddings(X, method=method, min_cluster_size=3)
    truth = [reader(c.file_name) for c in clips]
    assert clustering.n_clusters == 6
    assert adjusted_rand_score(truth, clustering.labels) >= 0.95
    assert clustering.confidence.shape == (len(clips),)
    assert ((clustering.confidence >= 0) & (clustering.confidence <= 1)).all()


@pytest.mark.parametrize("method", ["auto", "hdbscan", "kmeans"])
def test_one_reader_is_one_speaker(embedded, method):
    _, X = _subset(embedded, lambda f: reader(f) == "2033")
    assert sp.cluster_embeddings(X, method=method).n_clusters == 1


def test_bounds_are_honoured(embedded):
    _, X = embedded
    assert sp.cluster_embeddings(X, "kmeans", max_speakers=4).n_clusters == 4
    assert sp.cluster_embeddings(X, "kmeans", min_speakers=8, max_speakers=8).n_clusters == 8
    assert sp.cluster_embeddings(X, "hdbscan", max_speakers=3).n_clusters == 3
    assert sp.cluster_embeddings(X, "hdbscan", min_speakers=8).n_clusters == 8


def test_clustering_is_deterministic_and_order_free(embedded):
    clips, X = embedded
    first = sp.cluster_embeddings(X, "kmeans")
    perm = np.random.default_rng(1).permutation(len(X))
    again = sp.cluster_embeddings(X[perm], "kmeans")
    assert adjusted_rand_score(first.labels[perm], again.labels) == 1.0


def test_hdbscan_noise_goes_to_nearest_cluster_flagged_uncertain(embedded):
    _, X = embedded
    # An in-between voice: the normalised mean of two readers' clips is nobody's.
    outlier = X[:2].mean(axis=0) + X[20:22].mean(axis=0)
    Y = np.vstack([X, outlier / np.linalg.norm(outlier)])
    result = sp.cluster_embeddings(Y, "hdbscan")
    assert result.n_clusters == 6
    assert result.uncertain[-1] and result.confidence[-1] < 0.9


@pytest.mark.parametrize("n", [0, 1, 2])
def test_tiny_corpora_are_one_speaker(embedded, n):
    _, X = embedded
    result = sp.cluster_embeddings(X[:n], "hdbscan", min_speakers=2)
    assert len(result.labels) == n and (result.labels == 0).all()


def test_identical_clips_are_one_speaker(embedded):
    _, X = embedded
    result = sp.cluster_embeddings(np.repeat(X[:1], 5, axis=0), "kmeans", min_speakers=2, max_speakers=3)
    assert result.n_clusters == 1


def test_embedding_cache_is_used(embedded, cache_root):
    clips, X = embedded

    class Refuses:
        name, dim = "resemblyzer", 256

        def embed(self, samples, sample_rate):
            raise AssertionError("should have come from the cache")

    np.testing.assert_array_equal(sp.embed_clips(clips, Refuses(), cache_root, "resemblyzer"), X)


def test_batches_on_several_workers_give_the_same_vectors(embedded, embedder):
    """Two batches at once (one torch thread each) = one batch at a time; torch threads restored."""
    import torch

    clips, _ = embedded
    clips = clips[:20]  # two batches
    threads = torch.get_num_threads()
    together = sp.embed_clips(clips, embedder, None, "resemblyzer", workers=2)
    assert torch.get_num_threads() == threads
    one_by_one = sp.embed_clips(clips, embedder, None, "resemblyzer", workers=1)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_clip_without_an_embedding_is_named(embedded, workers):
    """One batch at a time or several at once, the error names the clip to remove."""
    from tts_pipeline.embeddings import EmbeddingError
    from tts_pipeline.errors import PipelineError

    clips, _ = embedded
    bad = clips[20]

    class OneSilentClip:
        name, dim, parallel_batches = "fake", 4, True

        def embed(self, samples, sample_rate):
            if len(samples) == bad_len:
                raise EmbeddingError("silent audio")
            return np.ones(4, dtype=np.float32) / 2

    bad_len = len(sp.load_samples(bad)[0])
    with pytest.raises(PipelineError, match=f"{bad.path}: silent audio; remove the clip"):
        sp.embed_clips(clips, OneSilentClip(), None, "fake", workers=workers)


def test_damaged_embedding_cache_entries_are_recomputed(embedded, embedder, tmp_path):
    """A cut-short vector, or a vector without its marker (a crash between the two), is a miss."""
    import shutil

    from tts_pipeline.cache import ContentCache
    from tts_pipeline.fsutil import sha256_file
    from tts_pipeline.speakers.embedding_cache import cache_dir

    clips, X = embedded
    clips = clips[:4]
    root = tmp_path / "speakers"
    sp.embed_clips(clips, embedder, root, "resemblyzer")
    cache = ContentCache(cache_dir(root, "resemblyzer", None), ".npy")
    cut = cache.paths(sha256_file(clips[0].path))[0]
    cut.write_bytes(cut.read_bytes()[:40])
    cache.paths(sha256_file(clips[1].path))[1].unlink()
    computed = []

    class Counts:
        name, dim = "resemblyzer", 256

        def embed(self, samples, sample_rate):
            computed.append(len(samples))
            return embedder.embed(samples, sample_rate)

    again = sp.embed_clips(clips, Counts(), root, "resemblyzer")
    assert len(computed) == 2  # only the two damaged entries
    np.testing.assert_allclose(again, X[:4], atol=1e-6)
    assert all(cache.get(sha256_file(c.path)) is not None for c in clips)  # repaired
    shutil.rmtree(root)


# --------------------------------------------------------------------------- stage outputs


def _run(corpus, out, embedder, cache_root, metadata=None, corrections=None, method="hdbscan", **kw):
    return sp.run_speakers(
        metadata or corpus / "metadata.csv",
        corpus,
        out,
        method=method,
        corrections_file=corrections,
        cache_root=cache_root,
        metrics_file=out.parent / f"{out.name}-metrics.json",
        embedder=embedder,
        review_clips=2,
        **kw,
    )


def test_stage_outputs_follow_the_contract(corpus, embedder, cache_root, tmp_path):
    out = tmp_path / "speakers"
    result = _run(corpus, out, embedder, cache_root)
    emb = np.load(out / "embeddings.npy")
    index = json.loads((out / "embeddings_index.json").read_text())
    ids = json.loads((out / "speaker_ids.json").read_text())
    assert emb.dtype == np.float32 and emb.shape == (60, 256)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert index == sorted(index) and len(index) == 60
    assert set(ids["clips"]) == set(index)
    assert sorted(ids["speakers"]) == [str(i) for i in range(6)]
    for sid, info in ids["speakers"].items():
        assert info["name"] == f"speaker_{sid}" and info["clips"] == 10 and info["hours"] > 0
        assert (out / "cluster_samples" / f"speaker_{sid}_sample.wav").is_file()
    for entry in ids["clips"].values():
        assert set(entry) == {"speaker_id", "confidence", "uncertain"}
    truth = [reader(f) for f in index]
    assert adjusted_rand_score(truth, [ids["clips"][f]["speaker_id"] for f in index]) >= 0.95
    metrics = json.loads((tmp_path / "speakers-metrics.json").read_text())
    assert metrics["speakers"] == 6 and metrics["clips"] == 60 and 0 < metrics["mean_confidence"] <= 1
    assert metrics == result.metrics


CORRECTIONS = """\
speakers:
  Alice:
    anchors: [audio/1688-142285-0000.wav]
    clips: [audio/3080-5032-0005.wav]        # a clip moved (pinned) to Alice
  Bob:                                       # two clusters merged
    anchors: [audio/1998-15444-0000.wav, audio/2033-164914-0000.wav]
  Carol:                                     # split off two clips of 2414
    clips: [audio/2414-128291-0000.wav, audio/2414-128291-0001.wav]
  Gone:
    clips: [audio/not-in-the-corpus.wav]
"""


def _expected_by_name(file_names):
    """Reader folder -> name the corrections above give, per clip."""
    expected = {}
    for f in file_names:
        r = reader(f)
        if f == "audio/3080-5032-0005.wav" or r == "1688":
            expected[f] = "Alice"
        elif r in ("1998", "2033"):
            expected[f] = "Bob"
        elif f in ("audio/2414-128291-0000.wav", "audio/2414-128291-0001.wav"):
            expected[f] = "Carol"
        else:
            expected[f] = None  # automatic
    return expected


def _names(out: Path) -> dict[str, str]:
    ids = json.loads((out / "speaker_ids.json").read_text())
    return {f: ids["speakers"][str(e["speaker_id"])]["name"] for f, e in ids["clips"].items()}


def test_corrections_applied_as_written_and_survive_reruns(corpus, embedder, cache_root, tmp_path):
    corrections = tmp_path / "tst.speakers.yaml"
    corrections.write_text(CORRECTIONS, encoding="utf-8")
    out = tmp_path / "speakers"
    _run(corpus, out, embedder, cache_root, corrections=corrections)
    ids = json.loads((out / "speaker_ids.json").read_text())
    names = _names(out)
    expected = _expected_by_name(names)
    assert [ids["speakers"][str(i)]["name"] for i in range(3)] == ["Alice", "Bob", "Carol"]
    assert "Gone" not in {s["name"] for s in ids["speakers"].values()}
    for f, name in expected.items():
        if name is not None:
            assert names[f] == name, f
        else:
            assert names[f].startswith("speaker_"), f
    # automatic speakers: one per remaining reader, ids after the named ones, largest first
    auto = {reader(f): names[f] for f, n in expected.items() if n is None}
    assert len(set(auto.values())) == 3
    sizes = [ids["speakers"][str(i)]["clips"] for i in range(3, 6)]
    assert sizes == sorted(sizes, reverse=True) == [10, 9, 8]
    assert ids["clips"]["audio/3080-5032-0005.wav"] == {
        "speaker_id": 0,
        "confidence": 1.0,
        "uncertain": False,
    }

    # Re-run: shuffled metadata, the other clustering method: the same result, byte for byte.
    shuffled = tmp_path / "shuffled.csv"
    order = [f"audio/{p.stem}.wav" for p in sorted(DATA.glob("*/*.webm"))]
    random.Random(7).shuffle(order)
    _write_metadata(shuffled, order)
    for method in ("hdbscan", "kmeans"):
        again = tmp_path / f"again-{method}"
        _run(corpus, again, embedder, cache_root, metadata=shuffled, corrections=corrections, method=method)
        assert (again / "speaker_ids.json").read_bytes() == (out / "speaker_ids.json").read_bytes()

    # Fewer clips (reader 3331 gone): cluster numbers change, the named speakers do not.
    fewer = tmp_path / "fewer.csv"
    _write_metadata(fewer, [f for f in sorted(order) if reader(f) != "3331"])
    smaller = tmp_path / "smaller"
    _run(corpus, smaller, embedder, cache_root, metadata=fewer, corrections=corrections)
    for f, name in _names(smaller).items():
        assert (expected[f] or "auto") == (name if not name.startswith("speaker_") else "auto")


def test_anchors_of_two_names_in_one_cluster_divide_it(embedded):
    clips, X = embedded
    names = [c.file_name for c in clips]
    clustering = sp.cluster_embeddings(X, "hdbscan")
    corr = sp.parse_corrections(
        {
            "speakers": {
                "Dave": {"anchors": ["audio/3331-159605-0000.wav"]},
                "Erin": {"anchors": ["audio/3331-159605-0001.wav"]},
            }
        },
        Path("x.speakers.yaml"),
    )
    result = sp.apply_corrections(names, X, clustering, corr)
    assert result.names[:2] == ["Dave", "Erin"]
    members = [i for i, f in enumerate(names) if reader(f) == "3331"]
    assert set(result.labels[members]) == {0, 1}
    assert result.labels[names.index("audio/3331-159605-0000.wav")] == 0
    assert result.labels[names.index("audio/3331-159605-0001.wav")] == 1
    assert result.n_speakers == 7


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "expected a mapping"),
        ("speaker:\n  A: {}\n", "unknown key(s) speaker"),
        ("speakers:\n  A:\n    anchor: [audio/x.wav]\n", "speakers.A: unknown key(s) anchor"),
        ("speakers:\n  A:\n    clips: 3\n", "speakers.A.clips: expected a list"),
        (
            "speakers:\n  A:\n    clips: [audio/x.wav]\n  B:\n    anchors: [audio/x.wav]\n",
            "speakers.B.anchors: audio/x.wav is already listed under speakers.A",
        ),
        ("speakers: [A, B]\n", "speakers: expected a mapping"),
        ("speakers:\n  A: [audio/x.wav\n", "not valid YAML"),
    ],
)
def test_bad_corrections_file_names_file_and_key(tmp_path, text, message):
    path = tmp_path / "xx.speakers.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PipelineError) as info:
        sp.load_corrections(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_missing_corrections_file_is_no_corrections(tmp_path):
    assert sp.load_corrections(tmp_path / "none.speakers.yaml").speakers == []


# --------------------------------------------------------------------------- review page


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.pre: dict[str, str] = {}
        self._pre_id: str | None = None
        self.sections: list[str] = []
        self._section_audio: list[int] = []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "section" and "speaker" in a.get("class", ""):
            self.sections.append(a["id"])
            self._section_audio.append(0)
        if tag == "audio" and self._section_audio:
            self._section_audio[-1] += 1
        if tag == "pre":
            self._pre_id = a.get("id") or f"pre{len(self.pre)}"
            self.pre[self._pre_id] = ""

    def handle_endtag(self, tag):
        if tag == "pre":
            self._pre_id = None

    def handle_data(self, data):
        if self._pre_id:
            self.pre[self._pre_id] += data


def test_review_page_structure_and_corrections_round_trip(corpus, embedder, cache_root, tmp_path):
    out = tmp_path / "speakers"
    result = _run(corpus, out, embedder, cache_root)
    page = _Collect()
    page.feed((out / "review.html").read_text(encoding="utf-8"))
    assert page.sections == [f"speaker-{i}" for i in range(6)]
    assert all(n >= 2 for n in page._section_audio)  # representative + least-certain players
    audios = [a for t, a in page.tags if t == "audio" and a.get("src")]  # the clip table fills the rest
    assert audios and all(a["src"].startswith("data:audio/webm;base64,") for a in audios)
    webm = base64.b64decode(audios[0]["src"].split(",", 1)[1])
    assert webm[:4] == b"\x1a\x45\xdf\xa3"  # EBML/WebM
    (tmp_path / "player.webm").write_bytes(webm)
    assert len(decode_audio(tmp_path / "player.webm", 16000)) > 16000  # a real, playable clip
    (img,) = [a for t, a in page.tags if t == "img" and a.get("id") == "map"]
    assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [a for t, a in page.tags if t == "link" or (t == "script" and "src" in a)]  # self-contained
    per_speaker = [text for key, text in page.pre.items() if key != "corrections"]
    assert any("anchors:" in t and "audio/" in t for t in per_speaker)
    # The suggested corrections file, applied as-is, reproduces the result with names fixed.
    suggested = yaml.safe_load(page.pre["corrections"])
    corr = sp.parse_corrections(suggested, Path("suggested.yaml"))
    redo = sp.apply_corrections(result.assignment.file_names, result.embeddings, result.clustering, corr)
    np.testing.assert_array_equal(redo.labels, result.assignment.labels)
    assert redo.names == result.assignment.names and all(redo.named)


def test_review_server_serves_the_page(tmp_path):
    (tmp_path / "review.html").write_text("<html>ok</html>", encoding="utf-8")
    server = sp.make_review_server(tmp_path, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/review.html"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and b"ok" in response.read()
    finally:
        server.shutdown()
        server.server_close()


def test_review_without_a_page_is_a_clear_error(tmp_path):
    with pytest.raises(PipelineError, match="no review page yet"):
        sp.serve_review(tmp_path, open_browser=False)


# --------------------------------------------------------------------------- CLI + edge cases


def test_cli_runs_the_stage_with_flags(corpus, cache_root, tmp_path):
    from tts_pipeline.cli import main

    subset = tmp_path / "subset.csv"
    _write_metadata(
        subset,
        [f"audio/{p.stem}.wav" for p in sorted(DATA.glob("*/*.webm")) if p.parent.name in ("1688", "3080")],
    )
    config = tmp_path / "tst.yaml"
    config.write_text(
        "language: {code: tst}\nsource: {type: local, path: .}\n"
        f"paths: {{cache: '{cache_root.parent}'}}\n"
        "speaker_diarization: {clustering_method: kmeans, min_speakers: null, max_speakers: null}\n",
        encoding="utf-8",
    )
    (tmp_path / "tst.speakers.yaml").write_text(
        "speakers:\n  Ann:\n    anchors: [audio/3080-5032-0000.wav]\n"
    )
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    out = tmp_path / "out"
    rc = main(
        ["speakers", "--config", str(config), "--params", str(params), "--audio_dir", str(corpus),
         "--metadata_csv", str(subset), "--output_dir", str(out), "--metrics_file", str(tmp_path / "m.json")]
    )  # fmt: skip
    assert rc == 0
    ids = json.loads((out / "speaker_ids.json").read_text())
    assert ids["speakers"]["0"]["name"] == "Ann" and len(ids["speakers"]) == 2
    assert all(ids["clips"][f]["speaker_id"] == (0 if reader(f) == "3080" else 1) for f in ids["clips"])
    assert json.loads((tmp_path / "m.json").read_text())["speakers"] == 2


def test_single_clip_corpus_runs_end_to_end(corpus, embedder, cache_root, tmp_path):
    one = tmp_path / "one.csv"
    _write_metadata(one, ["audio/1688-142285-0003.wav"])
    out = tmp_path / "one"
    result = _run(corpus, out, embedder, cache_root, metadata=one, min_speakers=2)
    assert result.assignment.n_speakers == 1
    assert (out / "review.html").is_file() and (out / "cluster_samples" / "speaker_0_sample.wav").is_file()


def test_missing_audio_and_bad_metadata_are_clear_errors(corpus, tmp_path):
    bad = tmp_path / "bad.csv"
    _write_metadata(bad, ["audio/nope.wav"])
    with pytest.raises(PipelineError, match="nope.wav"):
        sp.load_clips(bad, corpus)
    dup = tmp_path / "dup.csv"
    _write_metadata(dup, ["audio/1688-142285-0000.wav", "audio/1688-142285-0000.wav"])
    with pytest.raises(PipelineError, match="appears twice"):
        sp.load_clips(dup, corpus)


def test_failed_run_keeps_the_previous_output(corpus, embedder, cache_root, tmp_path):
    one = tmp_path / "one.csv"
    _write_metadata(one, ["audio/1688-142285-0003.wav", "audio/1688-142285-0004.wav"])
    out = tmp_path / "out"
    _run(corpus, out, embedder, cache_root, metadata=one)
    before = (out / "speaker_ids.json").read_bytes()
    broken = tmp_path / "broken.speakers.yaml"
    broken.write_text("speakers: [oops]\n")
    with pytest.raises(PipelineError):
        _run(corpus, out, embedder, cache_root, metadata=one, corrections=broken)
    assert (out / "speaker_ids.json").read_bytes() == before


def test_review_action_parses():
    from tts_pipeline.cli import build_parser

    args = build_parser().parse_args(
        ["speakers", "review", "--config", "x.yaml", "--no-browser", "--port", "8123"]
    )
    assert (args.action, args.no_browser, args.port) == ("review", True, 8123)
    assert build_parser().parse_args(["speakers", "--config", "x.yaml"]).action == "run"


def test_shipped_demo_corrections_are_valid():
    path = Path(__file__).resolve().parents[1] / "languages" / "demo.speakers.yaml"
    corrections = sp.load_corrections(path)
    assert [s.name for s in corrections.speakers] == ["Diane", "Sheila"]
    listed = [c for s in corrections.speakers for c in s.anchors + s.clips]
    assert len(listed) == len(set(listed)) == 13
