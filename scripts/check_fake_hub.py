#!/usr/bin/env python3
"""Check burnish's fake Hub (tests/common/fake_hub.rs) against the official Python client.

Starts the fake through its ignored test, then drives it with huggingface_hub (Xet disabled,
as burnish's uploads are): create_repo, upload_folder (basic and multipart LFS), hf_hub_download
and snapshot_download into an empty cache, and compares bytes. Writes
tests/fixtures/golden/fake-hub-check.json, which a Rust test asserts.

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


def main():
    proc = subprocess.Popen(
        ["cargo", "test", "-q", "--test", "hub", "--", "--ignored", "--exact", "fake_hub_server", "--nocapture"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
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
        # A 2.5 MB object: above the fake's 1 MB chunk size, so it goes multipart.
        with open(os.path.join(folder, "big.bin"), "wb") as f:
            f.write(os.urandom(2_500_000))
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
        proc.kill()
    out = os.path.join(ROOT, "tests", "fixtures", "golden", "fake-hub-check.json")
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        json.dump({"results": results}, f, indent=1)
        f.write("\n")
    print(json.dumps(results, indent=1))
    return 0 if all(v for k, v in results.items() if isinstance(v, bool)) else 1


if __name__ == "__main__":
    sys.exit(main())
