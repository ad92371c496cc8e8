"""The speakers stage's output folder: its file names (the contract in docs/ARCHITECTURE.md).

Shared by the stage that writes the folder and the review server that reads it.
"""

EMBEDDINGS_FILE = "embeddings.npy"
INDEX_FILE = "embeddings_index.json"
SPEAKER_IDS_FILE = "speaker_ids.json"
REVIEW_FILE = "review.html"
SAMPLES_DIR = "cluster_samples"
#: What a speakers folder of an earlier version (before the output marker) always holds.
SPEAKERS_LEGACY = (SPEAKER_IDS_FILE, EMBEDDINGS_FILE)
