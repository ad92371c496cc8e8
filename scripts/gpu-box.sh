#!/usr/bin/env bash
# Set up a fresh rented GPU box to train one language: CUDA torch + the `gpu` extra, the S3
# remote from environment variables, `dvc pull` of what training needs, then the next command.
# Idempotent: re-run it any time (also on a replacement box after preemption).
#
#   git clone <your repo> && cd <repo>
#   export TTS_S3_URL=s3://my-bucket/tts-pipeline         # the DVC remote the laptop pushed to
#   export TTS_S3_ENDPOINT=https://s3.eu-central-003.backblazeb2.com   # only for non-AWS S3 (MinIO, B2, R2, ...)
#   export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...  # or AWS_PROFILE / ~/.aws/credentials
#   bash scripts/gpu-box.sh --lang hsn
#
# Options:
#   --lang CODE            language to train (or TTS_LANG); must be in params.yaml `languages`
#   --cuda TAG             PyTorch CUDA build, e.g. cu126, cu128, cu130 (or TTS_TORCH_CUDA;
#                          default: from the driver's CUDA version that nvidia-smi reports)
#   --skip-install         don't touch the Python environment
#   --create-bucket        create the bucket of TTS_S3_URL if it does not exist yet (else a
#                          missing bucket is an error that says how to create it)
#   --sync-checkpoints [S] back up models/<code>/checkpoints to the bucket every S seconds
#                          (default 600; Ctrl-C stops it): run it next to training, in a
#                          second terminal, as preemption insurance
#   --sync-once            one backup pass, then exit
#   --restore-checkpoints  copy the backed-up checkpoints newer than the local ones back
#                          (set-up does this by itself)
#   --dry-run              print the commands instead of running them
#
# Never writes credentials anywhere: the remote and its endpoint go to .dvc/config.local
# (gitignored); the AWS keys stay in the environment / the AWS config where boto looks.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

LANG_CODE=${TTS_LANG:-}
CUDA_TAG=${TTS_TORCH_CUDA:-}
REMOTE_NAME=${TTS_DVC_REMOTE:-s3remote}
DRY=0
INSTALL=1
CREATE_BUCKET=0
MODE=setup
SYNC_EVERY=600

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --lang) LANG_CODE=${2:?--lang needs a language code}; shift 2 ;;
    --lang=*) LANG_CODE=${1#*=}; shift ;;
    --cuda) CUDA_TAG=${2:?--cuda needs a tag like cu128}; shift 2 ;;
    --cuda=*) CUDA_TAG=${1#*=}; shift ;;
    --skip-install) INSTALL=0; shift ;;
    --create-bucket) CREATE_BUCKET=1; shift ;;
    --dry-run) DRY=1; shift ;;
    --sync-checkpoints)
      MODE=sync; shift
      if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then SYNC_EVERY=$1; shift; fi ;;
    --sync-once) MODE=sync-once; shift ;;
    --restore-checkpoints) MODE=restore; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu-box.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf '==> %s\n' "$*"; }
die() { printf 'gpu-box.sh: error: %s\n' "$*" >&2; exit 1; }
# Run a command, or only show it with --dry-run.
run() {
  if [ "$DRY" = 1 ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

[ -n "$LANG_CODE" ] || die "which language? pass --lang <code> (or export TTS_LANG)"
[[ $LANG_CODE =~ ^[A-Za-z0-9_-]+$ ]] || die "--lang '$LANG_CODE' is not a language code"
[ -f "languages/$LANG_CODE.yaml" ] || die "languages/$LANG_CODE.yaml not found in $ROOT"
[ -f dvc.yaml ] && [ -d .dvc ] || die "$ROOT is not the tts-pipeline repository (no dvc.yaml / .dvc)"
grep -Eq "^[[:space:]]+$LANG_CODE:" params.yaml || grep -Eq "^[[:space:]]*-[[:space:]]*$LANG_CODE[[:space:]]*$" params.yaml \
  || die "params.yaml: '$LANG_CODE' is not listed under 'languages'"

CKPT_DIR="models/$LANG_CODE/checkpoints"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV_PY="$ROOT/.venv/bin/python"
if [ ! -x "$VENV_PY" ] && { [ "$INSTALL" = 0 ] || [ "$MODE" != setup ]; }; then  # set up some other way
  VENV_PY=$(command -v python3 || command -v python || echo python3)
fi

# --------------------------------------------------------------------------- S3 helpers
# Checkpoint backups live next to the DVC remote, under <TTS_S3_URL>/checkpoints-backup/<code>/,
# written with s3fs (installed with dvc-s3), with the same endpoint and credentials as DVC.
# The bucket of TTS_S3_URL must exist: DVC's own error for a missing one is obscure. With
# --create-bucket it is created (in TTS_S3_REGION when set).
s3_bucket() {
  local bucket="${TTS_S3_URL#s3://}"; bucket="${bucket%%/*}"
  if [ "$DRY" = 1 ]; then
    [ "$CREATE_BUCKET" = 1 ] && echo "+ create bucket $bucket if missing (s3fs)"
    return 0
  fi
  "$VENV_PY" - "$bucket" "$CREATE_BUCKET" <<'PY'
import os, sys

import s3fs

bucket, create = sys.argv[1], sys.argv[2] == "1"
endpoint = os.environ.get("TTS_S3_ENDPOINT") or None
kwargs = {"endpoint_url": endpoint} if endpoint else {}
if os.environ.get("TTS_S3_REGION"):
    kwargs["region_name"] = os.environ["TTS_S3_REGION"]
fs = s3fs.S3FileSystem(client_kwargs=kwargs)
try:
    exists = fs.exists(bucket)
except Exception as exc:  # noqa: BLE001 - credentials, endpoint, network: say which
    sys.exit(f"gpu-box.sh: error: cannot reach bucket '{bucket}' ({type(exc).__name__}: {exc}); "
             "check TTS_S3_ENDPOINT and the AWS credentials")
if exists:
    sys.exit(0)
if not create:
    where = f" --endpoint-url {endpoint}" if endpoint else ""
    sys.exit(f"gpu-box.sh: error: bucket '{bucket}' does not exist; create it (aws{where} s3 mb s3://{bucket}, "
             "or your provider's console) or re-run with --create-bucket")
fs.mkdir(bucket)
print(f"==> created bucket {bucket}")
PY
}

s3_checkpoints() {  # $1: push | pull
  [ -n "${TTS_S3_URL:-}" ] || die "TTS_S3_URL is not set (e.g. s3://my-bucket/tts-pipeline)"
  local dest="${TTS_S3_URL%/}/checkpoints-backup/$LANG_CODE"
  if [ "$DRY" = 1 ]; then
    echo "+ $1 $CKPT_DIR <-> $dest (s3fs, endpoint ${TTS_S3_ENDPOINT:-AWS default})"
    return 0
  fi
  "$VENV_PY" - "$1" "$CKPT_DIR" "$dest" <<'PY'
import os, sys
from pathlib import Path

import s3fs

action, local, remote = sys.argv[1], Path(sys.argv[2]), sys.argv[3].removeprefix("s3://")
endpoint = os.environ.get("TTS_S3_ENDPOINT") or None
fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint} if endpoint else {})
if action == "push":
    # Checkpoints are renamed into place when complete; skip the temporary ones being written.
    files = sorted(
        (p for p in local.rglob("*") if p.is_file() and not any(".tmp-" in part for part in p.parts)),
        key=lambda p: (p.name == "index.json", str(p)),  # the index last: it names finished checkpoints
    )
    if not files:
        print(f"no checkpoints in {local} yet: nothing to back up")
        sys.exit(0)
    have = {p: info["size"] for p, info in fs.find(remote, detail=True).items()} if fs.exists(remote) else {}
    sent = 0
    keys = set()
    for path in files:
        key = f"{remote}/{path.relative_to(local).as_posix()}"
        keys.add(key)
        try:
            if have.get(key) != path.stat().st_size:
                fs.put_file(str(path), key)
                sent += 1
        except FileNotFoundError:  # rotated away (save_total_limit) while we looked
            keys.discard(key)
    stale = [key for key in have if key not in keys]
    if stale:
        fs.rm(stale)
    print(f"checkpoint backup: {sent} file(s) uploaded, {len(stale)} removed, to s3://{remote}")
else:
    if not fs.exists(remote):
        print(f"no checkpoint backup at s3://{remote}")
        sys.exit(0)

    def step(name):  # "checkpoint-120" -> 120, else None
        suffix = name.removeprefix("checkpoint-")
        return int(suffix) if name.startswith("checkpoint-") and suffix.isdigit() else None

    # What is here may be older than the backup (`dvc pull` of a finished earlier run): the
    # backup's checkpoints newer than the newest complete one here are restored, with its index.json.
    have = [step(p.name) for p in local.glob("checkpoint-*") if (p / "state" / "trainer_state.json").is_file()]
    have = [s for s in have if s is not None]
    newest = max(have, default=-1)
    keys = fs.find(remote)
    newer = [k for k in keys if (step(k[len(remote) + 1 :].split("/")[0]) or -1) > newest]
    if not newer:
        print(f"checkpoint backup: nothing newer than step {newest} in s3://{remote}")
        sys.exit(0)
    got = 0
    for key in newer + [k for k in keys if k[len(remote) + 1 :] == "index.json"]:
        target = local / key[len(remote) + 1 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(key, str(target))
        got += 1
    print(f"checkpoint backup: {got} file(s) restored into {local}")
PY
}

case "$MODE" in
  sync-once) s3_checkpoints push; exit 0 ;;
  restore) s3_checkpoints pull; exit 0 ;;
  sync)
    say "backing up $CKPT_DIR every ${SYNC_EVERY}s (Ctrl-C to stop)"
    while true; do s3_checkpoints push || echo "backup failed; retrying in ${SYNC_EVERY}s" >&2; [ "$DRY" = 1 ] && exit 0; sleep "$SYNC_EVERY"; done ;;
esac

# --------------------------------------------------------------------------- 1. Python + CUDA torch
if [ "$INSTALL" = 1 ]; then
  TORCH_VERSION=$(grep -oE '"torch==[0-9][0-9.]*' pyproject.toml | head -1 | cut -d= -f3)
  [ -n "$TORCH_VERSION" ] || die "pyproject.toml: no torch==X pin found"
  if [ -z "$CUDA_TAG" ]; then
    if command -v nvidia-smi >/dev/null 2>&1; then
      driver_cuda=$(nvidia-smi 2>/dev/null | grep -oE 'CUDA Version: [0-9]+\.[0-9]+' | grep -oE '[0-9]+\.[0-9]+' || true)
      case "$driver_cuda" in
        1[3-9].*) CUDA_TAG=cu130 ;;
        12.[89]) CUDA_TAG=cu128 ;;
        12.[67]) CUDA_TAG=cu126 ;;
        "") die "nvidia-smi reports no CUDA version; pass --cuda cu128 (or cu126/cu130)" ;;
        *) die "the NVIDIA driver supports CUDA $driver_cuda only; torch $TORCH_VERSION needs >= 12.6: update the driver or pick another box" ;;
      esac
      say "driver supports CUDA $driver_cuda: using the $CUDA_TAG build of torch"
    elif [ "$DRY" = 1 ]; then
      CUDA_TAG=cu128
    else
      die "nvidia-smi not found: is this a GPU box? (pass --cuda cu128 to install anyway)"
    fi
  fi
  if [ ! -x "$VENV_PY" ]; then
    say "creating .venv with $("$PYTHON" --version 2>&1)"
    run "$PYTHON" -m venv .venv
  fi
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  have_torch=$("$VENV_PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
  if [ "$have_torch" = "$TORCH_VERSION+$CUDA_TAG" ]; then
    say "torch $have_torch already installed"
  else
    say "installing torch $TORCH_VERSION ($CUDA_TAG) + torchaudio from the PyTorch index${have_torch:+ (replacing $have_torch)}"
    # torchaudio (needed by the gpu extra's pyannote.audio) must come from the same CUDA index:
    # the PyPI build is linked against another CUDA and breaks `import transformers`.
    run "$VENV_PY" -m pip install -q "torch==$TORCH_VERSION" torchaudio \
      --index-url "https://download.pytorch.org/whl/$CUDA_TAG"
  fi
  stamp=".venv/.gpu-box-$(sha256sum pyproject.toml | cut -c1-16)"
  if [ -f "$stamp" ]; then
    say "project + gpu extra already installed for this pyproject.toml"
  else
    say "installing tts-pipeline with the gpu extra (torch stays the CUDA build: the pin matches it)"
    run "$VENV_PY" -m pip install -q -e ".[gpu]"
    run touch "$stamp"
  fi
  if [ "$DRY" = 0 ]; then
    "$VENV_PY" -c 'import torch; ok = torch.cuda.is_available(); print("==> torch", torch.__version__, "CUDA available:", ok, torch.cuda.get_device_name(0) if ok else ""); raise SystemExit(0 if ok else 3)' \
      || die "torch cannot see the GPU (driver/CUDA mismatch?); try another --cuda tag"
  fi
fi
if [ -x "$ROOT/.venv/bin/dvc" ]; then
  export PATH="$ROOT/.venv/bin:$PATH"
fi
if [ "$DRY" = 0 ]; then
  command -v dvc >/dev/null 2>&1 || die "dvc not found; run without --skip-install"
fi
export DVC_NO_ANALYTICS=1

# --------------------------------------------------------------------------- 2. the S3 remote
if [ -n "${TTS_S3_URL:-}" ]; then
  [[ $TTS_S3_URL == s3://* ]] || die "TTS_S3_URL must look like s3://bucket/path, got '$TTS_S3_URL'"
  say "DVC remote '$REMOTE_NAME' -> $TTS_S3_URL${TTS_S3_ENDPOINT:+ (endpoint $TTS_S3_ENDPOINT)}, in .dvc/config.local"
  run dvc remote add --local --default --force "$REMOTE_NAME" "$TTS_S3_URL"
  if [ -n "${TTS_S3_ENDPOINT:-}" ]; then
    run dvc remote modify --local "$REMOTE_NAME" endpointurl "$TTS_S3_ENDPOINT"
  fi
  if [ -n "${TTS_S3_REGION:-}" ]; then
    run dvc remote modify --local "$REMOTE_NAME" region "$TTS_S3_REGION"
  fi
  if [ -z "${AWS_ACCESS_KEY_ID:-}${AWS_PROFILE:-}" ] && [ ! -f "${AWS_SHARED_CREDENTIALS_FILE:-$HOME/.aws/credentials}" ]; then
    echo "gpu-box.sh: warning: no AWS credentials in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) or ~/.aws/credentials" >&2
  fi
  s3_bucket || exit 1
elif [ "$DRY" = 0 ] && ! dvc remote list --local 2>/dev/null | grep -q .; then
  die "TTS_S3_URL is not set and no remote is configured in .dvc/config.local (export TTS_S3_URL=s3://bucket/path)"
fi

# `dvc exp run` records each experiment as a git commit: it needs an identity. A fresh box has
# none; set a repository-local one (not committed anywhere) unless the user has their own.
if ! git config user.email >/dev/null 2>&1; then
  say "no git identity on this box: setting a local one (git config --local; change it to yours to push commits)"
  run git config --local user.name "tts-pipeline GPU box"
  run git config --local user.email "gpu-box@$(hostname 2>/dev/null || echo localhost)"
fi

# --------------------------------------------------------------------------- 3. what training needs
# The frozen settings (config@<code>) are cheap and not in the remote: regenerate them.
if grep -qE '^[[:space:]]+config:' dvc.yaml; then
  say "freezing the effective settings (config@$LANG_CODE)"
  run dvc repro --single-item "config@$LANG_CODE"
fi
say "pulling the dataset (data/$LANG_CODE/dataset) and any earlier training outputs"
run dvc pull "dataset@$LANG_CODE" \
  || die "could not pull dataset@$LANG_CODE: did the laptop run 'dvc push' and commit + push dvc.lock? (dvc status --cloud dataset@$LANG_CODE shows what the remote lacks)"
# A previous run's model/checkpoints, if one was pushed; none yet is fine.
run dvc pull --allow-missing "train@$LANG_CODE" || echo "(no earlier training outputs in the remote)"
if [ -n "${TTS_S3_URL:-}" ]; then  # also when the pull above brought older checkpoints
  say "restoring checkpoints backed up by --sync-checkpoints that are newer than the ones here (if any)"
  s3_checkpoints pull
fi
# What training will do, before the GPU hour is paid for: a train stage whose outputs exist
# nowhere (not here, in the cache or on the remote) is run, never reported "up to date".
if [ "$DRY" = 0 ]; then
  until=evaluate
  grep -qE '^[[:space:]]+evaluate:' dvc.yaml || until=train
  if command -v tts-pipeline >/dev/null 2>&1; then
    say "plan (tts-pipeline run --until $until --allow-missing --dry):"
    tts-pipeline run --config "languages/$LANG_CODE.yaml" --until "$until" --allow-missing --dry --log-level WARNING \
      || die "could not plan the run (see above)"
  else
    dvc status "train@$LANG_CODE" || true
  fi
fi

cat <<EOF

==> ready. Train (nothing upstream of train is recomputed; checkpoints resume):
    . .venv/bin/activate
    tts-pipeline run --config languages/$LANG_CODE.yaml --until evaluate --allow-missing
  or an experiment:
    dvc exp run --allow-missing -S training.learning_rate=5e-5 evaluate@$LANG_CODE
  preemption insurance, in a second terminal:
    bash scripts/gpu-box.sh --lang $LANG_CODE --skip-install --sync-checkpoints 600
  when it is done, send the model back (everything the run or experiment changed):
    dvc push
    git add dvc.lock params.yaml params languages metrics && git commit -m "$LANG_CODE: trained on GPU" && git push
    (experiments you don't keep in the workspace: dvc exp push origin <name>)
EOF
