#!/usr/bin/env python3
"""Check burnish's fake Hub (tests/common/fake_hub/) against the official Python client, and
record what that client sent and received.

Starts the fake as a server (`cargo run --example fake_hub`, scripts/fake_hub.rs), drives it
with huggingface_hub (Xet disabled, as burnish's uploads are): create_repo, upload_folder (basic
and multipart LFS), hf_hub_download and snapshot_download into an empty cache, and checks the
bytes that come back. The fake records every exchange; this script writes them to
tests/fixtures/golden/fake-hub-transcript.json, binary bodies replaced by references to the
uploaded files (the repository's qwen2-untied fixture and a generated big.bin). `tests/hub.rs`
replays the client's requests against a fresh fake and fails if any answer differs, so a change
to the fake that would break the official client fails a test.

    ~/.cache/burnish-ref/venv/bin/python scripts/check_fake_hub.py
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def big_bin():
    """2.5 MB, above the fake's 1 MB chunk size (so it goes multipart); tests/hub.rs builds the
    same bytes."""
    return bytes((i * 7 + 3) % 251 for i in range(2_500_000))


def file_refs(transcript, files):
    """Binary bodies that are a slice of one of `files` become {"file", "offset", "len"}."""
    import base64
    for ex in transcript:
        for key in ("request_body", "response_body"):
            body = ex[key]
            if "base64" not in body:
                continue
            data = base64.b64decode(body["base64"])
            for name, content in files.items():
                at = content.find(data)
                if data and at >= 0:
                    ex[key] = {"file": name, "offset": at, "len": len(data)}
                    break
            else:
                raise SystemExit(f"{ex['method']} {ex['url']}: a binary body from no known file")


def main():
    transcript_path = tempfile.mktemp(suffix=".json")
    proc = subprocess.Popen(
        ["cargo", "run", "-q", "--example", "fake_hub", "--", transcript_path],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = None
    for line in proc.stdout:
        if line.startswith("FAKE_HUB_URL="):
            url = line.strip().split("=", 1)[1]
            break
    if url is None:
        raise SystemExit("the fake hub did not start")
    results = {}
    try:
        os.environ["HF_ENDPOINT"] = url
        import huggingface_hub
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download
        api = HfApi(endpoint=url, token="hf_write")
        api.create_repo("org/pycheck", private=False)
        results["create_repo"] = True

        folder = tempfile.mkdtemp()
        src = os.path.join(ROOT, "tests", "fixtures", "models", "qwen2-untied")
        for f in os.listdir(src):
            shutil.copy(os.path.join(src, f), folder)
        with open(os.path.join(folder, "big.bin"), "wb") as f:
            f.write(big_bin())
        api.upload_folder(repo_id="org/pycheck", folder_path=folder, commit_message="python client check")
        results["upload_folder"] = True
        results["multipart_upload"] = True  # big.bin could only have been stored by the multipart path

        cache = tempfile.mkdtemp()
        p = hf_hub_download("org/pycheck", "config.json", cache_dir=cache, token="hf_write")
        results["hf_hub_download"] = sha(p) == sha(os.path.join(folder, "config.json"))
        snap = snapshot_download("org/pycheck", cache_dir=cache, token="hf_write")
        results["snapshot_download"] = True
        results["bytes_identical"] = all(
            sha(os.path.join(snap, f)) == sha(os.path.join(folder, f)) for f in os.listdir(folder))
        results["files"] = sorted(os.listdir(snap))
        results["huggingface_hub"] = huggingface_hub.__version__
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    transcript = json.load(open(transcript_path))
    os.remove(transcript_path)
    files = {f"tests/fixtures/models/qwen2-untied/{f}": open(os.path.join(src, f), "rb").read()
             for f in os.listdir(src)}
    files["big.bin"] = big_bin()
    file_refs(transcript, files)
    out = os.path.join(ROOT, "tests", "fixtures", "golden", "fake-hub-transcript.json")
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        json.dump({"huggingface_hub": results["huggingface_hub"], "results": results,
                   "exchanges": transcript}, f, indent=1)
        f.write("\n")
    print(json.dumps(results, indent=1))
    print(f"{len(transcript)} exchanges recorded in {out}")
    return 0 if all(v for k, v in results.items() if isinstance(v, bool)) else 1


if __name__ == "__main__":
    sys.exit(main())
