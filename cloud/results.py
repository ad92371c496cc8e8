"""Bring a cloud training run home without git credentials on the rented box.

The data (model, checkpoints, evaluation report) travels through the DVC remote (`dvc push` on
the box, `dvc pull` at home). What git must carry (dvc.lock, the frozen settings, metrics) travels
as a git bundle in the same bucket, `<TTS_S3_URL>/cloud-results/<code>.bundle`, with the same
endpoint and credentials as DVC (`TTS_S3_URL`, `TTS_S3_ENDPOINT`, `TTS_S3_REGION`, AWS_* from the
environment; at home DVC's default remote when TTS_S3_URL is not set; nothing is written to
disk but the bundle).

    python cloud/results.py push --lang hsn    # on the box, after training and `dvc push`
    python cloud/results.py pull --lang hsn    # at home: git pull the bundle, dvc pull the model
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

#: What a run or an experiment changes in git (the README's "Pushing the model back").
TRACKED = ["dvc.lock", "params.yaml", "params", "languages", "metrics"]


def die(message: str) -> None:
    sys.exit(f"cloud/results.py: error: {message}")


def git(*args: str, capture: bool = False) -> str:
    proc = subprocess.run(["git", *args], capture_output=capture, text=True)
    if proc.returncode:
        die(f"git {' '.join(args)} failed{': ' + proc.stderr.strip() if capture else ''}")
    return proc.stdout.strip() if capture else ""


def dvc_config(key: str) -> str:
    proc = subprocess.run(["dvc", "config", key], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def remote() -> tuple[str, str, str]:
    """(url, endpoint, region): TTS_S3_* (what the box is given), else DVC's default remote
    (what the laptop configured with `dvc remote add --local --default`)."""
    if os.environ.get("TTS_S3_URL"):
        env = os.environ
        return env["TTS_S3_URL"], env.get("TTS_S3_ENDPOINT", ""), env.get("TTS_S3_REGION", "")
    name = dvc_config("core.remote")
    if not name:
        return "", "", ""
    return tuple(dvc_config(f"remote.{name}.{key}") for key in ("url", "endpointurl", "region"))  # type: ignore[return-value]


def bucket_key(code: str, url: str) -> str:
    if not url.startswith("s3://"):
        die(
            f"no S3 remote ({url or 'none'}): export TTS_S3_URL=s3://bucket/path (and TTS_S3_ENDPOINT), "
            "or make the S3 remote DVC's default (dvc remote add --local --default ...)"
        )
    return f"{url.removeprefix('s3://').rstrip('/')}/cloud-results/{code}.bundle"


def filesystem(endpoint: str, region: str):
    import s3fs  # installed with dvc-s3

    kwargs = {}
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    if region:
        kwargs["region_name"] = region
    return s3fs.S3FileSystem(client_kwargs=kwargs)


def push(code: str, base: str | None) -> None:
    """Commit what the run changed (if anything) and upload the commits since `base` as a bundle."""
    git("add", "-A", "--", *[p for p in TRACKED if Path(p).exists()])
    if subprocess.run(["git", "diff", "--cached", "--quiet"]).returncode:
        git("commit", "-q", "-m", f"{code}: trained in the cloud")
    base = base or os.environ.get("TTS_BASE_COMMIT") or None
    head = git("rev-parse", "HEAD", capture=True)
    if base and git("rev-parse", f"{base}^{{commit}}", capture=True) == head:
        print("cloud results: nothing changed in git (dvc.lock as it was); nothing to upload")
        return
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / f"{code}.bundle"
        git("bundle", "create", "-q", str(bundle), f"{base}..HEAD" if base else "HEAD")
        url, endpoint, region = remote()
        key = bucket_key(code, url)
        filesystem(endpoint, region).put_file(str(bundle), key)
    print(f"cloud results: commit {head[:12]} uploaded to s3://{key}")


def pull(code: str, remote_pull: bool) -> None:
    """Fetch the bundle, merge its commit into the current branch, then `dvc pull` the outputs."""
    url, endpoint, region = remote()
    key = bucket_key(code, url)
    fs = filesystem(endpoint, region)
    if not fs.exists(key):
        die(f"no results at s3://{key}: has the cloud run finished (sky jobs logs / sky logs)?")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / f"{code}.bundle"
        fs.get_file(key, str(bundle))
        git("pull", "-q", "--no-rebase", "--no-edit", str(bundle), "HEAD")
    print(f"cloud results: merged {git('rev-parse', '--short', 'HEAD', capture=True)} from s3://{key}")
    if remote_pull:
        stages = [f"train@{code}"]
        if re.search(r"^\s+evaluate:", Path("dvc.yaml").read_text(encoding="utf-8"), re.M):
            stages.append(f"evaluate@{code}")
        subprocess.run(["dvc", "pull", *stages], check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["push", "pull"])
    parser.add_argument("--lang", default=os.environ.get("TTS_LANG"), help="language code (or TTS_LANG)")
    parser.add_argument(
        "--base", default=None, help="push: the commit the run started from (or TTS_BASE_COMMIT)"
    )
    parser.add_argument("--no-dvc-pull", dest="dvc_pull", action="store_false", help="pull: git only")
    args = parser.parse_args(argv)
    if not args.lang or not re.fullmatch(r"[A-Za-z0-9_-]+", args.lang):
        die("which language? pass --lang <code> (or export TTS_LANG)")
    os.chdir(Path(__file__).resolve().parent.parent)
    if args.action == "push":
        push(args.lang, args.base)
    else:
        pull(args.lang, args.dvc_pull)


if __name__ == "__main__":
    main()
