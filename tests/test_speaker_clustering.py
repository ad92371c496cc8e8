"""Clustering that holds on short, noisy clips, and near-duplicate takes (issue 19).

Real speech: the held-out LibriSpeech clips (0005-0009 of each of the 6 readers, which no
constant was tuned on) cut to 1.5-4 s and mixed with pink noise at 15 dB SNR
(tests/noisy_clips.py, seeded), plus two takes exported three times. On these takes HDBSCAN
alone finds 5 speakers (ARI 0.794); the default (auto) must
find the 6.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from noisy_clips import variants
from sklearn.metrics import adjusted_rand_score

from tts_pipeline import speakers as sp
from tts_pipeline.audio import decode_audio, write_wav
from tts_pipeline.config import ConfigError, SpeakerSection, load_config
from tts_pipeline.errors import PipelineError
from tts_pipeline.speakers import duplicates

DATA = Path(__file__).parent / "data" / "librispeech-6spk"
#: (clip, copies) exported more than once: the same take under other names.
DUPLICATED = {"1998-15444-0005": 3, "3331-159605-0007": 3}


@pytest.fixture(scope="module")
def noisy_corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Preprocessed-stage dir of the noisy held-out clips plus exact duplicates; name -> reader."""
    files = [f for f in sorted(DATA.glob("*/*.webm")) if int(f.stem.split("-")[-1]) >= 5]
    noisy = variants([decode_audio(f, 16000) for f in files], seed=0)["noisy"]
    root = tmp_path_factory.mktemp("noisy")
    (root / "audio").mkdir()
    truth = {}
    for f, wav in zip(files, noisy, strict=True):
        write_wav(root / "audio" / f"{f.stem}.wav", wav, 16000)
        truth[f"audio/{f.stem}.wav"] = f.parent.name
        for copy in range(1, DUPLICATED.get(f.stem, 1)):
            shutil.copyfile(root / "audio" / f"{f.stem}.wav", root / "audio" / f"{f.stem}-copy{copy}.wav")
            truth[f"audio/{f.stem}-copy{copy}.wav"] = f.parent.name
    (root / "metadata.csv").write_text(
        "file_name,transcription\n" + "".join(f"{name},text\n" for name in sorted(truth)), encoding="utf-8"
    )
    return root, truth


@pytest.fixture(scope="module")
def noisy_run(noisy_corpus, embedder, tmp_path_factory) -> tuple[sp.SpeakersResult, Path]:
    """The stage with default settings on the noisy corpus, and its output folder."""
    root, _ = noisy_corpus
    out = tmp_path_factory.mktemp("out")
    result = sp.run_speakers(
        root / "metadata.csv", root, out / "speakers", embedder=embedder, metrics_file=out / "speakers.json"
    )
    return result, out


def _truth(result: sp.SpeakersResult, truth: dict[str, str]) -> list[str]:
    return [truth[c.file_name] for c in result.clips]


def test_default_is_auto():
    assert SpeakerSection().clustering_method == "auto"


def test_default_holds_on_short_noisy_clips(noisy_corpus, noisy_run):
    _, truth = noisy_corpus
    result, _ = noisy_run
    assert result.assignment.n_speakers == 6  # the stage, copies included
    assert adjusted_rand_score(_truth(result, truth), result.assignment.labels) >= 0.95
    # the takes alone (HDBSCAN alone: 5 speakers, ARI 0.794 here)
    takes = [i for i, c in enumerate(result.clips) if "-copy" not in c.file_name]
    alone = sp.cluster_embeddings(result.embeddings[takes])
    assert alone.n_clusters == 6
    assert adjusted_rand_score([_truth(result, truth)[i] for i in takes], alone.labels) >= 0.95


def test_exact_duplicates_are_one_take_not_a_speaker(noisy_run):
    result, _ = noisy_run
    names = [c.file_name for c in result.clips]
    labels = result.assignment.labels
    groups = [[names[i] for i in g] for g in result.clustering.duplicates]
    assert sorted(sorted(g) for g in groups) == sorted(
        sorted([f"audio/{stem}.wav"] + [f"audio/{stem}-copy{i}.wav" for i in range(1, n)])
        for stem, n in DUPLICATED.items()
    )
    for group in groups:
        assert len({int(labels[names.index(name)]) for name in group}) == 1
    # forced hdbscan too: each take lands in a cluster that has other clips
    forced = sp.cluster_embeddings(result.embeddings, "hdbscan")
    for group in result.clustering.duplicates:
        others = np.setdiff1d(np.arange(len(names)), group)
        assert forced.labels[group[0]] in set(forced.labels[others].tolist())


def test_every_take_exported_three_times_is_still_six_speakers(noisy_run):
    """Each clip three times: without grouping HDBSCAN makes every take a micro-cluster of
    min_cluster_size (3) copies; with it, every method gives what it gives on the takes alone."""
    result, _ = noisy_run
    takes = [i for i, c in enumerate(result.clips) if "-copy" not in c.file_name]
    X = result.embeddings[takes]
    tripled = np.vstack([X, X, X])
    assert sp.cluster_embeddings(tripled, "hdbscan", duplicate_cosine=None).n_clusters > 6
    for method in ("auto", "hdbscan", "kmeans"):
        grouped, alone = sp.cluster_embeddings(tripled, method), sp.cluster_embeddings(X, method)
        assert len(grouped.duplicates) == len(takes)
        assert adjusted_rand_score(alone.labels, grouped.labels[: len(takes)]) == 1.0
        assert (grouped.labels[: len(takes)] == grouped.labels[len(takes) : 2 * len(takes)]).all()
    assert sp.cluster_embeddings(tripled).n_clusters == 6


def test_reasons_and_duplicates_reach_metrics_outputs_and_review_page(noisy_run):
    result, out = noisy_run
    m = json.loads((out / "speakers.json").read_text())
    assert m["method_requested"] == "auto" and m["method"] in ("hdbscan", "kmeans")
    assert m["method_reason"] == result.clustering.reason
    assert m["method_reason"].startswith("auto: ") and "silhouette" in m["method_reason"]
    assert m["near_duplicate_groups"] == 2 and m["near_duplicate_clips"] == 6
    doc = json.loads((out / "speakers" / sp.SPEAKER_IDS_FILE).read_text())
    assert len(doc["near_duplicates"]) == 2
    assert all(name in doc["clips"] for group in doc["near_duplicates"] for name in group)
    page = (out / "speakers" / sp.REVIEW_FILE).read_text(encoding="utf-8")
    assert result.clustering.reason.split(";")[0] in page and "near-duplicate" in page


@pytest.mark.parametrize("method", ["hdbscan", "kmeans"])
def test_explicit_method_is_forced(noisy_run, method):
    result = sp.cluster_embeddings(noisy_run[0].embeddings, method)
    assert result.method == method and result.requested == method
    assert result.reason.startswith(f"clustering_method {method}")


@pytest.mark.parametrize(
    ("body", "message"),
    [("clustering_method: spectral", "clustering_method"), ("duplicate_cosine: 1.5", "duplicate_cosine")],
)
def test_bad_settings_name_the_key(tmp_path, body, message):
    path = tmp_path / "xx.yaml"
    path.write_text(
        f"language: {{code: xx}}\nsource: {{type: local, path: p}}\nspeaker_diarization: {{{body}}}\n"
    )
    with pytest.raises(ConfigError, match=f"speaker_diarization.{message}"):
        load_config(path, Path(__file__).resolve().parents[1] / "params.yaml")


def test_duplicate_grouping_can_be_turned_off(tmp_path):
    path = tmp_path / "xx.yaml"
    path.write_text(
        "language: {code: xx}\nsource: {type: local, path: p}\nspeaker_diarization: {duplicate_cosine: null}\n"
    )
    cfg = load_config(path, Path(__file__).resolve().parents[1] / "params.yaml")
    assert cfg.speaker_diarization.duplicate_cosine is None
    assert (
        sp.cluster_embeddings(np.repeat(np.eye(4), 3, axis=0), "kmeans", duplicate_cosine=None).duplicates
        == []
    )


def test_unknown_method_names_the_key():
    with pytest.raises(PipelineError, match="clustering_method.*auto"):
        sp.cluster_embeddings(np.eye(4), "spectral")


def test_near_duplicate_groups_are_transitive_and_blockwise(monkeypatch):
    eye = np.eye(16)
    angle = np.arccos(0.995)  # X5 is X1 turned by `angle`, X6 by twice that: cosine 0.98 to X1
    turned = [np.cos(t * angle) * eye[1] + np.sin(t * angle) * eye[8] for t in (1, 2)]
    X = np.vstack([eye[:5], *turned, eye[3]])
    assert X[5] @ X[1] >= 0.99 and X[6] @ X[5] >= 0.99 and X[6] @ X[1] < 0.99
    monkeypatch.setattr(duplicates, "DUPLICATE_BLOCK", 3)  # pairs across blocks are found too
    assert duplicates.near_duplicate_groups(X, 0.99) == [[1, 5, 6], [3, 7]]
    assert duplicates.near_duplicate_groups(X[:5], 0.99) == []


def test_auto_keeps_hdbscan_beyond_the_k_means_range():
    """30 well-separated voices: k-means only searches up to AUTO_MAX_SPEAKERS (20)."""
    rng = np.random.default_rng(0)
    centres = np.abs(rng.standard_normal((30, 256)))  # resemblyzer-like: same voice cosine ~0.8
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    X = np.repeat(centres, 6, axis=0) + 0.03 * rng.standard_normal((180, 256))
    result = sp.cluster_embeddings(X, "auto")
    assert result.n_clusters == 30 and result.method == "hdbscan"
    assert "more than k-means tries" in result.reason
