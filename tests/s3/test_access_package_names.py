"""Objects in an access package get safe, unique entry names (issue 21, item 6), over moto's server.

Object keys are any text: ``..`` parts, a leading ``/``, ``//``, backslashes, control characters, 1,000
characters. Every object of the person lands in its own entry, which extracts inside the target folder, byte for
byte; ``/a``, ``//a`` and ``a`` stay three entries; the manifest maps each entry back to its key.
"""

from __future__ import annotations

import json
import os
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.retention.requests.access import PackageBuilder
from include.retention.requests.package_names import MAX_NAME_BYTES, EntryNames, encode_key
from include.retention.stores.base import Subject
from tests.s3.conftest import PLAIN, put, s3_policy

pytestmark = pytest.mark.integration

ANN = "ann@example.org"
KEYS = [
    "a", "/a", "//a", "a/", "a//b", "a/b", "./a", ".", "..", "../../escape.txt", "x/../../../escape2.txt",
    "..\\..\\win.txt", "dir\\file.txt", "ctl\x01\x1f\x7f.txt", "vt\x0bff\x0c\x1b.txt", "tab\there.txt",
    "%2F", "%", "a%2Fb", "/", "~", "bidi\u202etxt.exe", "zoë/ünïcödé.pdf", "C:\\Windows\\x.txt",
    "k" * 1000, "long/" + "é" * 500, "p/" * 300 + "deep.txt", "manifest.json", "README.md",
]


def policy(bucket: str):
    return s3_policy(f"""\
        uploads:
          bucket: {bucket}
          identities: {{email: "metadata:uploader-email"}}
        """)


def body(i: int, key: str) -> bytes:
    return f"object {i}: ".encode() + key.encode("utf-8", "surrogatepass") + bytes(range(256))


def test_every_object_extracts_inside_the_folder_byte_for_byte(s3, make_store, tmp_path):
    bucket = PLAIN  # (moto's version listing answers 500 for keys with control characters; real S3 lists them)
    for i, key in enumerate(KEYS):
        put(s3, bucket, key, body(i, key), Metadata={"uploader-email": ANN})
    put(s3, bucket, "other", b"somebody else's", Metadata={"uploader-email": "bob@example.org"})
    stored = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
              for o in page.get("Contents", [])}
    assert set(KEYS) <= stored, sorted(set(KEYS) - stored)  # moto kept every key as given
    store = make_store(policy(bucket))
    builder = PackageBuilder(store.policy, lambda system: store, [Subject("r1", {"email": ANN})], request_id="r1",
                             workdir=str(tmp_path))
    try:
        result = builder.build()
        target = tmp_path / "out"
        target.mkdir()
        with zipfile.ZipFile(result.path) as zf:
            names = zf.namelist()
            manifest = json.loads(zf.read("manifest.json"))
            zf.extractall(target)
    finally:
        builder.close()
    assert len(names) == len(set(names))
    objects = [n for n in names if n.startswith("objects/")]
    assert len(objects) == len(KEYS) and result.objects == {"objects.uploads": len(KEYS)}
    entries = manifest["object_entries"]
    assert set(entries) == set(objects)
    assert sorted(e["key"] for e in entries.values()) == sorted(KEYS)  # each key once: nothing collapsed
    assert {e["collection"] for e in entries.values()} == {"objects.uploads"}
    root = os.path.realpath(target)
    for name in objects:
        assert "\\" not in name and not name.startswith("/") and ".." not in name.split("/")
        assert "" not in name.split("/") and "." not in name.split("/")
        assert not any(ord(c) < 32 or ord(c) == 127 for c in name)
        assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
        path = os.path.realpath(target / name)
        assert path.startswith(root + os.sep)
        key = entries[name]["key"]
        with open(path, "rb") as fh:
            assert fh.read() == body(KEYS.index(key), key), key
    by_key = {e["key"]: name for name, e in entries.items()}
    for key, name in (("a", "a"), ("zoë/ünïcödé.pdf", "zoë/ünïcödé.pdf"), ("dir\\file.txt", "dir%5Cfile.txt"),
                      ("%", "%25"), ("..", "%2E%2E"), ("ctl\x01\x1f\x7f.txt", "ctl%01%1F%7F.txt")):
        assert by_key[key] == f"objects/objects.uploads/{name}"  # a plain key keeps its name; the rest is encoded
    # "a" is a file, so "a/b" cannot go into a folder "a": it gets a flat name with the key's digest
    assert by_key["a/b"].startswith("objects/objects.uploads/a%2Fb~") and by_key["a//b"].count("/") == 2
    assert by_key["k" * 1000].startswith("objects/objects.uploads/kkkk") and "~" in by_key["k" * 1000]
    assert len({by_key["a"], by_key["/a"], by_key["//a"]}) == 3  # three keys, three entries
    assert by_key["/a"] == "objects/objects.uploads/%2F/a"  # an empty part is %2F
    for i, key in enumerate(KEYS):  # the listing in the data file keeps the original keys
        assert key in [r["key"] for r in json.loads((target / "data" / "objects.uploads.json").read_text())], i
    assert not (target / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()
    assert json.loads((target / "manifest.json").read_text()) == manifest  # the object "manifest.json" is elsewhere


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.text(min_size=0, max_size=300), st.text(alphabet="ab/.\\", max_size=8)),
                min_size=1, max_size=12, unique=True))
def test_names_are_safe_and_unique_for_any_keys(keys):
    names = EntryNames()
    given_out = [names.name("objects/s.c/", k) for k in keys]
    assert len(set(given_out)) == len(keys)
    folders = {"/".join(n.split("/")[:i]) for n in given_out for i in range(1, n.count("/") + 1)}
    assert not folders & set(given_out)  # no name is a file where another needs a folder: all extract together
    for name in given_out:
        parts = name.split("/")
        assert name.startswith("objects/s.c/") and len(name.encode("utf-8")) <= MAX_NAME_BYTES
        assert "" not in parts and "." not in parts and ".." not in parts and "\\" not in name
        assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name)


@given(st.text(max_size=60), st.text(max_size=60))
def test_encoding_is_one_to_one(a, b):
    if a != b:
        assert encode_key(a) != encode_key(b)
