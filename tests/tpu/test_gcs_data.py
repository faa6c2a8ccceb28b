"""``gs://`` training and eval data, as a TPU worker reads it: the trainer's reader goes through fsspec to ``gcsfs``
(the ``tpu`` extra the launcher installs on every worker), here pointed at a local fake of the GCS JSON API
(``STORAGE_EMULATOR_HOST``, which gcsfs honours) that serves a generated dataset from a folder. The reader lists the
bucket's shards and reads the same samples as from the folder; the zero-shot eval source reads the eval split with
its class names. Without gcsfs, fsspec has no ``gs`` filesystem and every check here fails."""

from __future__ import annotations

import json
import threading
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pytest

BUCKET = "clipa-test-bucket"


class _FakeGcs(BaseHTTPRequestHandler):
    """The read-only part of the GCS JSON API that gcsfs uses: object listing (prefix + delimiter), object metadata
    and media downloads with byte ranges, for the objects under ``root`` (``root/KEY`` is ``gs://BUCKET/KEY``)."""

    root: Path
    requests: list[str]

    def log_message(self, *args):  # quiet
        pass

    def _json(self, obj, status=200):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _meta(self, key: str, path: Path) -> dict:
        st = path.stat()
        return {"kind": "storage#object", "bucket": BUCKET, "name": key, "size": str(st.st_size),
                "generation": "1", "metageneration": "1", "contentType": "application/octet-stream",
                "updated": "2026-01-01T00:00:00.000Z", "timeCreated": "2026-01-01T00:00:00.000Z",
                "storageClass": "STANDARD", "md5Hash": "", "crc32c": ""}

    def do_GET(self):  # noqa: N802 (http.server's name)
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.requests.append(self.path)
        parts = url.path.split("/")
        # /storage/v1/b/BUCKET/o[/KEY] and /download/storage/v1/b/BUCKET/o/KEY?alt=media
        if url.path.startswith("/download/storage/v1/b/") or q.get("alt") == "media":
            key = unquote("/".join(parts[parts.index("o") + 1:]))
            return self._media(key)
        if len(parts) >= 6 and parts[1:4] == ["storage", "v1", "b"] and parts[4] == BUCKET:
            if len(parts) == 5:
                return self._json({"kind": "storage#bucket", "name": BUCKET, "location": "US",
                                   "storageClass": "STANDARD"})
            if parts[5] == "o" and len(parts) == 6:
                return self._list(q.get("prefix", ""), q.get("delimiter"))
            if parts[5] == "o":
                key = unquote("/".join(parts[6:]))
                path = self.root / key
                if path.is_file():
                    return self._json(self._meta(key, path))
        return self._json({"error": {"code": 404, "message": f"not found: {url.path}"}}, 404)

    def _list(self, prefix: str, delimiter: str | None):
        items, prefixes = [], set()
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            key = path.relative_to(self.root).as_posix()
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            if delimiter and delimiter in rest:
                prefixes.add(prefix + rest.split(delimiter)[0] + delimiter)
            else:
                items.append(self._meta(key, path))
        self._json({"kind": "storage#objects", "items": items, "prefixes": sorted(prefixes)})

    def _media(self, key: str):
        path = self.root / key
        if not path.is_file():
            return self._json({"error": {"code": 404, "message": f"no object {key}"}}, 404)
        data = path.read_bytes()
        start, end = 0, len(data) - 1
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[len("bytes="):].partition("-")
            start = int(a) if a else 0
            end = min(int(b), len(data) - 1) if b else len(data) - 1
        chunk = data[start:end + 1]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Last-Modified", formatdate(usegmt=True))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        self.wfile.write(chunk)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from trainer.data.synth import write_synth

    root = tmp_path_factory.mktemp("gcs_bucket")
    write_synth(root / "tiny", samples=96, eval_samples=32, resolution=16, shard_size=48, vocab_size=300)
    return root


@pytest.fixture
def fake_gcs(tiny_data, monkeypatch):
    """The fake API on 127.0.0.1, serving ``tiny_data`` as gs://BUCKET/; gcsfs reaches it through
    STORAGE_EMULATOR_HOST with anonymous credentials (no token lookup, no metadata server)."""
    import fsspec

    handler = type("Handler", (_FakeGcs,), {"root": tiny_data, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_address[1]}")
    # gcsfs's default filesystem first asks the Storage Control gRPC API for the bucket's layout (retrying for 60 s),
    # which this fake does not serve; the answer "unknown" makes it use the JSON API, so keep that retry short.
    monkeypatch.setitem(fsspec.config.conf, "gcs", {"token": "anon", "retry_timeout": 0.2, "retry_initial": 0.05})
    fs_cls = fsspec.get_filesystem_class("gs")
    fs_cls.clear_instance_cache()  # no filesystem made for another endpoint is reused
    try:
        yield handler
    finally:
        fs_cls.clear_instance_cache()
        server.shutdown()
        server.server_close()


def test_the_gs_filesystem_is_gcsfs():
    import fsspec

    fs, path = fsspec.core.url_to_fs(f"gs://{BUCKET}/tiny/train", token="anon")
    assert type(fs).__module__.split(".")[0] == "gcsfs" and path == f"{BUCKET}/tiny/train"


def test_reader_lists_and_reads_gs_shards(fake_gcs, tiny_data):
    from trainer.data.reader import iter_shard_samples, list_shards

    urls = list_shards(f"gs://{BUCKET}/tiny/train")
    local = list_shards(str(tiny_data / "tiny" / "train"))
    assert len(urls) == len(local) == 2
    assert urls == [f"gs://{BUCKET}/tiny/train/{Path(p).name}" for p in local]
    for url, path in zip(urls, local):
        remote_samples = list(iter_shard_samples(url))
        local_samples = list(iter_shard_samples(path))
        assert len(remote_samples) == len(local_samples) == 48
        assert [s[1] if isinstance(s, tuple) else s for s in remote_samples] == \
            [s[1] if isinstance(s, tuple) else s for s in local_samples]
    assert any(r.startswith("/download/storage/v1/b/") or "alt=media" in r for r in fake_gcs.requests)


def test_eval_source_reads_gs_eval_split(fake_gcs, tiny_data):
    from trainer.data.pipeline import make_eval_source

    remote = make_eval_source(f"gs://{BUCKET}/tiny/eval", 16, batch_size=16)
    local = make_eval_source(str(tiny_data / "tiny" / "eval"), 16, batch_size=16)
    assert remote.classnames == local.classnames and len(remote.classnames) > 1
    got = [(b["images"].tobytes(), list(b["labels"])) for b in _dicts(remote)]
    want = [(b["images"].tobytes(), list(b["labels"])) for b in _dicts(local)]
    assert sum(len(labels) for _, labels in got) == 32 and got == want


def _dicts(source):
    for b in source:
        yield b if isinstance(b, dict) else {"images": b[0], "labels": b[1]}


def test_workers_install_the_extra_that_brings_gcsfs():
    """What makes the above true on a slice: the setup step installs the checkout with the extra that holds gcsfs."""
    import tomllib

    from trainer.tpu.workers import WORKER_EXTRA, install_script

    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert any(req.startswith("gcsfs") for req in project["optional-dependencies"][WORKER_EXTRA])
    assert any(req.startswith("google-cloud-tpu") for req in project["dependencies"])  # stays a base dependency
    assert f" -e './clipa[{WORKER_EXTRA}]' " in install_script()


def test_workers_install_the_locked_versions(tmp_path):
    """A slice gets the versions CI tested: the lock travels in the source archive and constrains the install."""
    import tarfile

    from trainer.tpu.workers import LOCK_FILE, build_source_archive, install_script

    assert f" -c clipa/{LOCK_FILE} " in install_script()
    with tarfile.open(build_source_archive(tmp_path / "src.tar.gz")) as tar:
        shipped = tar.extractfile(f"clipa/{LOCK_FILE}").read().decode()
    root = Path(__file__).resolve().parents[2]
    assert shipped == (root / LOCK_FILE).read_text() and "jax==" in shipped
