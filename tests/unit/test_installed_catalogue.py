"""The catalogues `make engine` installs beside the model (quantize.install, quantize.catalogue)
and the gateway reads at start-up (interest_core.catalogue): round trip, digests, the limit."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from gateway.catalogue import ModelMismatch, check_same_model
from gateway.server import StartupError, installed_version, load_catalogues
from interest_core.catalogue import (
    Catalogue,
    CatalogueNotInstalled,
    InstalledCatalogue,
    catalogue_paths,
    read_installed,
    write_installed,
)
from interest_core.config import DEFAULT_CONFIG_FILE, ROOT, load_settings
from interest_core.contract import VERSION_FILE, read_version
from interest_core.tokenizer import BehaviourTokenizer
from interest_model.corpus import item_popularity, load_catalogue
from quantize import install

FIXTURES = ROOT / "tests" / "fixtures"
DIM = 8
VOCAB = 30522


def installed(n: int = 5, platform: str = "food") -> InstalledCatalogue:
    rng = np.random.default_rng(0)
    catalogue = Catalogue(platform, tuple(f"B{i:04d}" for i in range(n)),
                          tuple(f"Thé vert n°{i} \"quoted\"" for i in range(n)))
    return InstalledCatalogue(catalogue, rng.standard_normal((n, DIM)).astype(np.float32),
                              np.arange(n, dtype=np.float32) * 1.5)


def test_round_trip_keeps_ids_titles_embeddings_and_popularity(tmp_path: Path) -> None:
    written = installed()
    entry = write_installed(tmp_path, written)
    assert entry["items"] == 5 and entry["dim"] == DIM
    read = read_installed(tmp_path, "food", {"dim": DIM, "catalogues": {"food": entry}})
    assert read.catalogue == written.catalogue
    np.testing.assert_array_equal(read.embeddings, written.embeddings)
    assert read.embeddings.dtype == np.float32 and not read.embeddings.flags.writeable  # mapped
    assert read.popularity.dtype == np.float32
    assert read.popularity.tolist() == written.popularity.tolist()
    head = read_installed(tmp_path, "food", {"catalogues": {"food": entry}}, limit=3)
    assert head.catalogue.item_ids == written.catalogue.item_ids[:3]
    assert head.catalogue.titles == written.catalogue.titles[:3]
    np.testing.assert_array_equal(head.embeddings, written.embeddings[:3])
    assert head.popularity.tolist() == written.popularity[:3].tolist()
    whole = read_installed(tmp_path, "food", {"catalogues": {"food": entry}}, limit=99)
    assert whole.catalogue == written.catalogue


@pytest.mark.parametrize("which", [0, 1])
def test_a_file_changed_after_install_is_refused(tmp_path: Path, which: int) -> None:
    entry = write_installed(tmp_path, installed())
    version = {"dim": DIM, "catalogues": {"food": entry}}
    path = catalogue_paths(tmp_path, "food")[which]
    data = bytearray(path.read_bytes())
    data[-2] ^= 1  # one bit of the last item's embedding or popularity
    path.write_bytes(bytes(data))
    with pytest.raises(CatalogueNotInstalled, match=rf"{path.name} does not match the digest VERSION.json"):
        read_installed(tmp_path, "food", version)


def test_missing_or_unlisted_catalogues_are_refused(tmp_path: Path) -> None:
    entry = write_installed(tmp_path, installed())
    with pytest.raises(CatalogueNotInstalled, match="no catalogue of platform 'kitchen'"):
        read_installed(tmp_path, "kitchen", {"catalogues": {"food": entry}})
    with pytest.raises(CatalogueNotInstalled, match="no catalogue of platform 'food'"):
        read_installed(tmp_path, "food", {"model_version": "old-install-without-catalogues"})
    with pytest.raises(CatalogueNotInstalled, match="embeds into 16 dimensions"):
        read_installed(tmp_path, "food", {"dim": 16, "catalogues": {"food": entry}})
    catalogue_paths(tmp_path, "food")[1].unlink()
    with pytest.raises(CatalogueNotInstalled, match=r"catalogue-food\.npy is missing"):
        read_installed(tmp_path, "food", {"catalogues": {"food": entry}})


def test_the_gateway_refuses_to_start_without_its_installed_catalogue(tmp_path: Path) -> None:
    model_dir = tmp_path / "interest_encoder"
    model_dir.mkdir()
    settings = load_settings(DEFAULT_CONFIG_FILE, model_repository=tmp_path)
    entry = write_installed(model_dir, installed(platform="food"))
    version: dict[str, object] = {"dim": DIM, "catalogues": {"food": entry}}
    with pytest.raises(StartupError, match=r"catalogue of 'kitchen'.*run `make engine`"):
        load_catalogues(settings, version)
    write_installed(model_dir, installed(platform="kitchen"))  # not the digest recorded
    version["catalogues"] = {"food": entry, "kitchen": {**entry, "items": 5}}
    with pytest.raises(StartupError, match=r"catalogue-kitchen\.json does not match.*run `make engine`"):
        load_catalogues(settings, version)


def test_importing_the_gateway_loads_no_offline_code() -> None:
    probe = ("import sys, gateway.server; print(sorted({m.split('.')[0] for m in sys.modules} & "
             "{'interest_model', 'quantize', 'torch', 'onnxruntime'}))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.strip() == "[]"


def bag_of_tokens_onnx(path: Path, table: np.ndarray) -> None:
    """A stand-in interest model: interest_embedding = sum of the real tokens' rows of `table`."""
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["rows"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["rows", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["interest_embedding"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "bag_of_tokens",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "T"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "T"])],
        [helper.make_tensor_value_info("interest_embedding", TensorProto.FLOAT, ["B", DIM])],
        [onnx.numpy_helper.from_array(table, "table"),
         onnx.numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
         onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def social_config(tmp_path: Path, limit: int) -> Path:
    config = tmp_path / "social-video.yaml"
    entries = {"data_dir": str(FIXTURES), "model_repository": str(tmp_path / "repo"),
               "var_dir": str(tmp_path / "var"), "catalogue_limit": limit,
               "platforms": {p: {"adapter": "any", "dataset": "social-video"} for p in ("social", "video")},
               "datasets": {"social-video": {
                   "adapter": "social_video", "path": "social-video",
                   "platforms": {"social": "social", "video": "video"},
                   "options": {"valid_fraction": 0.15, "test_fraction": 0.15, "seed": 7}}}}
    config.write_text(json.dumps(entries))  # JSON is YAML
    return config


def test_install_writes_the_catalogues_the_gateway_serves(tmp_path: Path) -> None:
    """quantize.install embeds each catalogue title with the installed ONNX model (tokenized as
    the gateway does), counts popularity on training users, applies catalogue_limit, and records
    every digest; the gateway's reader gets back exactly that."""
    table = np.random.default_rng(1).standard_normal((VOCAB, DIM)).astype(np.float32)
    model = tmp_path / "model.onnx"
    bag_of_tokens_onnx(model, table)
    report = tmp_path / "validation.json"
    report.write_text(json.dumps({"passed": True}))
    config = social_config(tmp_path, limit=10)
    assert install.main(["--onnx", str(model), "--report", str(report), "--config", str(config)]) == 0

    settings = load_settings(config)
    model_dir = settings.model_repository / settings.model_name
    version = read_version(model_dir)
    entries = version["catalogues"]
    assert isinstance(entries, dict) and set(entries) == {"social", "video"}
    served = load_catalogues(settings, version)
    expected_popularity = item_popularity(settings)
    tokenizer = BehaviourTokenizer(max_len=settings.max_seq_len)
    for name in ("social", "video"):
        catalogue = served[name].catalogue
        assert len(catalogue) == 10, "catalogue_limit applied at install"
        assert catalogue == load_catalogue(settings, name)
        ids, mask = tokenizer(list(catalogue.titles))
        expected = (table[ids] * mask[..., None]).sum(axis=1)
        np.testing.assert_allclose(served[name].embeddings, expected, rtol=1e-5, atol=1e-5)
        assert served[name].popularity.tolist() == expected_popularity[name].tolist()
        assert expected_popularity[name].sum() > 0
    # A smaller limit at serving time serves the head of what was installed.
    head = load_catalogues(settings.model_copy(update={"catalogue_limit": 4}), version)
    assert head["video"].catalogue.item_ids == served["video"].catalogue.item_ids[:4]

    # A reinstall that stops half-way leaves no VERSION.json to serve stale catalogues with.
    (model_dir / VERSION_FILE).unlink()
    with pytest.raises(StartupError, match="run `make engine`"):
        installed_version(settings)


class _ServingModel:
    """Stands in for the Triton encoder in this unit test: embeds each title as `table` says."""

    url = "127.0.0.1:8001"

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    async def embed_uncached(self, texts: list[str], rpc: str, platform: str) -> np.ndarray:
        return np.stack([self.table[t] * 3.0 for t in texts])  # unnormalised, as a model may answer


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_a_triton_of_another_model_is_refused_at_start_up() -> None:
    rng = np.random.default_rng(3)
    catalogue = Catalogue("kitchen", ("a", "b", "c", "d", "e"), ("A", "B", "C", "D", "E"))
    installed = InstalledCatalogue(catalogue, _unit(rng.standard_normal((5, DIM))), np.ones(5, np.float32))
    same = _ServingModel(dict(zip(catalogue.titles, installed.embeddings)))
    assert asyncio.run(check_same_model(same, installed, "v1")) > 0.999  # type: ignore[arg-type]
    other = _ServingModel(dict(zip(catalogue.titles, _unit(rng.standard_normal((5, DIM))))))
    with pytest.raises(ModelMismatch, match=r"does not serve the model v1 whose kitchen catalogue"):
        asyncio.run(check_same_model(other, installed, "v1"))  # type: ignore[arg-type]
