"""Pretraining data, tasks and the training job (resume = identical continuation)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fashionbert.configuration import DEFAULT_LEARNING_RATES, SEGMENT_Q, SEGMENT_T, named_config
from fashionbert.encoder import FashionBert
from fashionbert.modeling import FashionBertModel
from fashionbert.pretraining import PretrainCollator, PretrainCorpus, PretrainingTask, SubCategoryBatchSampler
from fashionbert.synthetic import generate_catalog
from fashionbert.text import IGNORE_INDEX, WholeWordMasker, train_tokenizer
from fashionbert.vision import DEFAULT_IMAGE_ENCODER
from indexer.catalog import read_catalog
from indexer.feature_store import FeatureStore
from indexer.features import FeatureJobConfig, extract_catalog_features
from pipelines.pretrain import PretrainConfig, pretrain

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, itc_dim=32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    result = generate_catalog(root / "train", 40, seed=5, workers=1, progress=False)
    catalog = read_catalog(result.catalog_path, require_image=True)
    extract_catalog_features(catalog, root / "features", FeatureJobConfig(num_workers=0, max_images_per_product=2), progress=False)
    store = FeatureStore(root / "features")
    tokenizer = train_tokenizer(catalog.texts(), vocab_size=600)
    return {"root": root, "catalog_path": result.catalog_path, "catalog": catalog, "store": store, "tokenizer": tokenizer}


@pytest.fixture(scope="module")
def corpus(data):
    return PretrainCorpus.from_catalog(data["catalog"], data["store"])


def make_collator(data, corpus, **kw):
    return PretrainCollator(corpus, WholeWordMasker(data["tokenizer"], seed=0), num_patches=64, **kw)


def test_corpus_collects_titles_queries_and_views(corpus):
    rec = corpus.records[0]
    assert len(corpus) == 40 and rec.images == (0, 1)
    assert len(rec.titles) >= 2  # title plus title_en / title_zh alternatives
    assert rec.queries and all(q.strip() for q in rec.queries)


def test_batches_are_same_sub_category_groups_and_deterministic(corpus):
    subs = [r.sub_category for r in corpus.records]
    sampler = SubCategoryBatchSampler(subs, batch_size=8, group_size=4, seed=1)
    batch = sampler.batch(0)
    assert len(batch) == 8 and len(set(batch)) == 8
    assert sampler.batch(3) == SubCategoryBatchSampler(subs, 8, 4, seed=1).batch(3)
    assert sampler.batch(0) != SubCategoryBatchSampler(subs, 8, 4, seed=2).batch(0)
    epoch = [i for s in range(sampler.batches_per_epoch) for i in sampler.batch(s)]
    assert len(set(epoch)) == len(epoch) == sampler.batches_per_epoch * 8  # no product twice in an epoch
    # groups: consecutive runs of one sub-category make up most of each batch
    same_neighbour = np.mean([subs[a] == subs[b] for s in range(5) for a, b in zip(sampler.batch(s), sampler.batch(s)[1:])])
    assert same_neighbour > 0.5


def test_rows_show_the_main_photo_by_preference(data, corpus):
    indices = list(range(16))

    def shows_main(share: float, step: int) -> list[bool]:
        feats = make_collator(data, corpus, main_view_share=share)(indices, step=step)["image_features"]
        main = [data["store"].get(corpus.records[i].product_id, 0).astype(np.float32) for i in indices]
        return [bool(np.array_equal(f.numpy(), m)) for f, m in zip(feats, main)]

    assert all(all(shows_main(1.0, step)) for step in range(3))  # only the main photo
    uniform = [x for step in range(6) for x in shows_main(0.0, step)]
    preferred = [x for step in range(6) for x in shows_main(0.75, step)]
    # two views each: uniform draws show the main one about half the time, 0.75 about 0.875 of it
    assert 0.3 < np.mean(uniform) < 0.7 < np.mean(preferred)
    with pytest.raises(ValueError, match="main_view_share"):
        make_collator(data, corpus, main_view_share=1.5)


def test_other_views_are_another_photo_of_the_rows_listing_and_change_no_other_draw(data, corpus):
    indices = list(range(16))
    plain = make_collator(data, corpus, main_view_share=1.0)(indices, step=2)
    batch = make_collator(data, corpus, main_view_share=1.0, view_contrast_share=1.0)(indices, step=2)
    assert "view_rows" not in plain
    assert all(torch.equal(plain[k], batch[k]) for k in plain)  # the extra draws come after every other one
    assert batch["view_rows"].tolist() == indices  # share 1, two photos each: every row takes part
    for row, feats in zip(batch["view_rows"].tolist(), batch["view_features"]):
        second = data["store"].get(corpus.records[indices[row]].product_id, 1).astype(np.float32)
        assert np.array_equal(feats.numpy(), second)  # the row shows photo 0; the other view is photo 1
    half = make_collator(data, corpus, view_contrast_share=0.5)
    counts = [len(half(indices, step=s)["view_rows"]) for s in range(8)]
    assert 0.3 < np.mean(counts) / 16 < 0.7
    with pytest.raises(ValueError, match="view_contrast_share"):
        make_collator(data, corpus, view_contrast_share=-0.1)


def test_view_contrast_matches_each_other_view_to_its_own_row(data, corpus):
    """Known answer: when the other view is the row's own image, every view finds its row; scrambled, few do."""
    torch.manual_seed(0)
    model = FashionBertModel(named_config("tiny", data["tokenizer"], corpus.features.feature_dim, **TINY))
    with torch.no_grad():
        model.logit_scale.fill_(np.log(100.0))
    batch = make_collator(data, corpus, main_view_share=1.0, view_contrast_share=1.0)(list(range(16)), step=0)
    rows = torch.tensor([1, 4, 6, 9, 15])
    batch["view_rows"], batch["view_features"] = rows, batch["image_features"][rows].clone()
    task = PretrainingTask(model)
    losses, stats = task(batch)
    assert {"mlm", "mpm", "tia", "itc", "view"} == set(losses) and stats["view_acc"] == 1.0
    batch["view_features"] = batch["image_features"][rows.roll(1)].clone()  # no view on its own row
    scrambled, scrambled_stats = task(batch)
    assert scrambled_stats["view_acc"] < 0.5 and losses["view"] < scrambled["view"]
    # a duplicate of the viewed product elsewhere in the batch is not a negative
    batch["view_features"] = batch["image_features"][rows].clone()
    batch["itc_same_product"] = batch["itc_same_product"].clone()
    batch["itc_same_product"][1, 0] = batch["itc_same_product"][0, 1] = True
    batch["image_features"][0] = batch["image_features"][1]
    _, dup_stats = task(batch)
    assert dup_stats["view_acc"] == 1.0  # unmasked, row 0 would tie row 1 for view 0, and win the arg-max
    batch["view_rows"], batch["view_features"] = rows[:0], batch["view_features"][:0]
    assert "view" not in task(batch)[0]  # no other views drawn this step: no view loss


def test_collator_builds_negatives_and_masks_only_matched_pairs(data, corpus):
    collate = make_collator(data, corpus, query_probability=0.5, clean_fraction=0.5)
    indices = SubCategoryBatchSampler([r.sub_category for r in corpus.records], 16, 4, seed=0).batch(0)
    batch = collate(indices, step=0)
    n = len(indices)
    tia = batch["tia_labels"]
    assert 0 < int(tia.sum()) < n
    for i in np.flatnonzero((tia == 0).numpy()):
        # a negative's image is another product's (target features differ from the row's own image)
        assert not torch.equal(batch["mpm_targets"][i], batch["image_features"][i])
        assert (batch["mlm_labels"][i] == IGNORE_INDEX).all() and not batch["mpm_mask"][i].any()
    matched = tia == 1
    clean = batch["tia_rows"]
    assert 0 < int(clean.sum()) < n
    assert (batch["zeroed_patches"][~clean].sum(1) == 6).all()  # 10 % of 64 patches, without replacement
    assert (batch["zeroed_patches"][clean].sum(1) == 0).all()
    assert torch.equal(batch["mpm_mask"], batch["zeroed_patches"] & matched[:, None])
    assert (batch["patch_features"][batch["zeroed_patches"]] == 0).all()
    assert torch.equal(batch["input_ids"][clean], batch["text_input_ids"][clean])  # TIA rows are not masked
    assert (batch["mlm_labels"][clean] == IGNORE_INDEX).all()
    masked_rows = (batch["mlm_labels"] != IGNORE_INDEX).any(1)
    assert masked_rows[~matched].sum() == 0  # MLM is scored on matched pairs only
    assert set(batch["token_type_ids"][:, 0].tolist()) == {SEGMENT_T, SEGMENT_Q}
    again = collate(indices, step=0)
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    assert not torch.equal(collate(indices, step=1)["zeroed_patches"], batch["zeroed_patches"])


def test_corruption_does_not_give_the_tia_label_away(data, corpus):
    """With TIA on corrupted rows (FashionBERT's single pass, clean_fraction=0), negatives are masked
    like positives: masking only matched rows would leak the label."""
    collate = make_collator(data, corpus, clean_fraction=0.0)
    mask_id = data["tokenizer"].mask_token_id
    rate = {0: [], 1: []}
    for step in range(40):
        batch = collate(list(range(16)), step=step)
        masked = (batch["input_ids"] == mask_id).sum(1).float() / batch["attention_mask"].sum(1)
        for label, value in zip(batch["tia_labels"].tolist(), masked.tolist()):
            rate[label].append(value)
    assert len(rate[0]) > 100 and len(rate[1]) > 100
    assert abs(np.mean(rate[0]) - np.mean(rate[1])) < 0.03, (np.mean(rate[0]), np.mean(rate[1]))
    assert collate(list(range(16)), step=0)["tia_rows"].all()


def test_tia_can_score_clean_and_corrupted_rows_without_leaking_the_label(data, corpus):
    """--tia-every-row: TIA scores every row, a share of them with the whole title; whether a row is
    clean must not depend on its TIA label, or "no [MASK]" would tell TIA the answer."""
    collate = make_collator(data, corpus, clean_fraction=0.5, tia_clean_only=False)
    clean_share = {0: [], 1: []}
    for step in range(40):
        batch = collate(list(range(16)), step=step)
        assert batch["tia_rows"].all()
        clean = ~batch["zeroed_patches"].any(1)
        assert torch.equal(batch["input_ids"][clean], batch["text_input_ids"][clean])  # the whole title
        assert (batch["mlm_labels"][clean] == IGNORE_INDEX).all()  # MLM reads the corrupted rows only
        for label, is_clean in zip(batch["tia_labels"].tolist(), clean.tolist()):
            clean_share[label].append(is_clean)
    assert len(clean_share[0]) > 100 and len(clean_share[1]) > 100
    assert abs(np.mean(clean_share[0]) - 0.5) < 0.1 and abs(np.mean(clean_share[1]) - 0.5) < 0.1
    # the same draws as with TIA on the clean rows only: only which rows TIA scores differs
    only_clean = make_collator(data, corpus, clean_fraction=0.5)(list(range(16)), step=3)
    every_row = collate(list(range(16)), step=3)
    assert all(torch.equal(only_clean[k], every_row[k]) for k in every_row if k != "tia_rows")
    assert torch.equal(only_clean["tia_rows"], ~every_row["zeroed_patches"].any(1))


def test_the_tia_row_choice_binds_a_resume_only_when_there_are_clean_rows(tmp_path):
    """Without clean rows the choice changes no step, so it must not stop a run saved before it existed."""
    cfg = PretrainConfig(tmp_path / "c.parquet", tmp_path / "feat", tmp_path / "out")
    assert "tia_clean_only" not in cfg.fingerprint()
    assert cfg.fingerprint() == replace(cfg, tia_clean_only=False).fingerprint()
    with_clean = replace(cfg, clean_fraction=0.5)
    assert with_clean.fingerprint()["tia_clean_only"] is True
    assert with_clean.fingerprint() != replace(with_clean, tia_clean_only=False).fingerprint()


def test_tia_negatives_come_from_the_same_sub_category(data, corpus):
    collate = make_collator(data, corpus, tia_negative_fraction=1.0, tia_other_sub_share=0.0)
    indices = SubCategoryBatchSampler([r.sub_category for r in corpus.records], 16, 4, seed=0).batch(2)
    batch = collate(indices, step=2)
    store = corpus.features
    for i, idx in enumerate(indices):
        rec = corpus.records[idx]
        same = [corpus.records[j] for j in indices if corpus.records[j].sub_category == rec.sub_category and corpus.records[j].product_id != rec.product_id]
        if not same:
            continue
        target = batch["mpm_targets"][i].numpy()
        owners = [r for r in same for v in r.images if np.array_equal(store.get(r.product_id, v).astype(np.float32), target)]
        assert owners, "the negative image must belong to a product of the same sub-category"


def _negative_owner_subs(corpus, indices, batch) -> list[tuple[str, str, bool]]:
    """(text's sub-category, the negative image's owner's, the batch's other-sub-category mark) of each
    negative row that could draw either."""
    store, out = corpus.features, []
    for i, idx in enumerate(indices):
        subs = {corpus.records[j].sub_category == corpus.records[idx].sub_category for j in indices if j != idx}
        if int(batch["tia_labels"][i]) == 1 or subs != {True, False}:  # only rows that had both kinds to draw from
            continue
        target = batch["mpm_targets"][i].numpy()
        owners = {corpus.records[j].sub_category for j in indices for v in corpus.records[j].images
                  if j != idx and np.array_equal(store.get(corpus.records[j].product_id, v).astype(np.float32), target)}
        assert len(owners) == 1, owners
        out.append((corpus.records[idx].sub_category, owners.pop(), bool(batch["tia_other_sub_rows"][i])))
    return out


def test_a_share_of_tia_negatives_comes_from_other_sub_categories(data, corpus):
    """The other-sub-category share: 0 keeps every negative in the text's sub-category, 1 sends each out of
    it, and a share in between mixes the two; a share outside [0, 1] is refused."""
    sampler = SubCategoryBatchSampler([r.sub_category for r in corpus.records], 16, 4, seed=0)
    counts = {}
    for share in (0.0, 0.5, 1.0):
        collate = make_collator(data, corpus, tia_negative_fraction=1.0, tia_other_sub_share=share)
        rows = [r for step in range(6) for r in _negative_owner_subs(corpus, sampler.batch(step), collate(sampler.batch(step), step=step))]
        assert all(marked == (a != b) for a, b, marked in rows)  # the batch marks exactly the other-sub-category rows
        counts[share] = (sum(a == b for a, b, _ in rows), sum(a != b for a, b, _ in rows))
    assert counts[0.0][1] == 0 and counts[0.0][0] > 40
    assert counts[1.0][0] == 0 and counts[1.0][1] > 40
    same, other = counts[0.5]
    assert 0.3 < other / (same + other) < 0.7, counts
    with pytest.raises(ValueError, match="tia_other_sub_share"):
        make_collator(data, corpus, tia_other_sub_share=1.5)


def test_attribute_twins_are_nobodys_negative(data, corpus):
    """Listings with the same visible attributes: the random TIA negative skips them, and the batch marks them."""
    rec = corpus.records[0]
    assert rec.attributes and dict(rec.attributes)["sub_category"] == rec.sub_category
    assert "season" not in dict(rec.attributes)  # named in titles, never drawn: no visual difference
    by_sub: dict[str, list[int]] = {}
    for i, r in enumerate(corpus.records):
        by_sub.setdefault(r.sub_category, []).append(i)
    members = max(by_sub.values(), key=len)
    assert len(members) >= 3
    twins = [replace(r, attributes=(("colour", "red"),)) if i in members[1:] else r for i, r in enumerate(corpus.records)]
    twinned = PretrainCorpus(twins, corpus.sources)
    batch = make_collator(data, twinned, tia_negative_fraction=1.0, attribute_twins=True, tia_other_sub_share=0.0)(members, step=0)
    odd_one = twinned.records[members[0]]
    odd_images = [corpus.features.get(odd_one.product_id, v).astype(np.float32) for v in odd_one.images]
    for row in range(1, len(members)):  # each twin's only same-sub-category non-twin is the odd one
        assert any(np.array_equal(batch["mpm_targets"][row].numpy(), image) for image in odd_images)
    expected = torch.ones(len(members), len(members), dtype=torch.bool)
    expected[0, :] = expected[:, 0] = False
    expected[0, 0] = True  # a record is its own twin (it is already "the same product")
    assert torch.equal(batch["attribute_twins"], expected)
    off = make_collator(data, twinned, tia_negative_fraction=1.0)(members, step=0)  # the default
    assert not off["attribute_twins"].any()


def test_grid_layout_ranks_every_text_against_every_image_of_its_group(data, corpus, tmp_path):
    collate = make_collator(data, corpus, query_probability=0.5, tia_grid=3)
    indices = SubCategoryBatchSampler([r.sub_category for r in corpus.records], 16, 4, seed=0).batch(1)
    batch = collate(indices, step=4)
    grid = batch["tia_grid"]
    groups = collate.grid_groups([corpus.records[i] for i in indices])
    assert grid.shape == (len(groups), 3, 3) and len(groups) == 16 // 9  # as many 3 x 3 groups as fit in 16 rows
    assert len(batch["input_ids"]) == grid.numel() and len(batch["text_input_ids"]) == 16  # ITC keeps every record
    eye = torch.eye(3, dtype=torch.bool)
    for g, group in enumerate(groups):
        records = [corpus.records[indices[i]] for i in group]
        assert len({r.sub_category for r in records}) == 1 and len({r.key for r in records}) == 3
        rows = grid[g]
        assert torch.equal(batch["tia_labels"][rows].bool(), eye)
        for a in range(3):
            # one text per grid row and one image per grid column, each corrupted the same way throughout
            assert all(torch.equal(batch["input_ids"][rows[a, 0]], batch["input_ids"][rows[a, b]]) for b in range(3))
            assert all(torch.equal(batch["patch_features"][rows[0, a]], batch["patch_features"][rows[b, a]]) for b in range(3))
            assert torch.equal(batch["mpm_targets"][rows[a, a]], batch["image_features"][group[a]])
        scored = (batch["mlm_labels"][rows.flatten()] != IGNORE_INDEX).any(1).reshape(3, 3)
        assert not scored[~eye].any() and not batch["mpm_mask"][rows[~eye]].any()  # MLM/MPM on matched rows only
    assert (batch["zeroed_patches"].sum(1) == 6).all()
    again = collate(indices, step=4)
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    with pytest.raises(ValueError, match="tia_grid"):
        make_collator(data, corpus, tia_grid=1)
    with pytest.raises(ValueError, match="clean_fraction"):
        make_collator(data, corpus, tia_grid=2, clean_fraction=0.5)
    with pytest.raises(ValueError, match="tia-negatives"):  # mining re-draws pair rows; the grid has its own negatives
        pretrain(_cfg(data, tmp_path / "both", tia_grid=2, tia_negatives="itc-hard"), echo=lambda s: None, progress=False)
    with pytest.raises(ValueError, match="attribute-twins"):  # the grid's ranking would still count twins as negatives
        pretrain(_cfg(data, tmp_path / "twins", tia_grid=2, attribute_twins=True), echo=lambda s: None, progress=False)
    with pytest.raises(ValueError, match="needs --tia-negatives itc-hard"):  # a share of nothing mined is a mistake
        pretrain(_cfg(data, tmp_path / "share", tia_hard_share=0.5), echo=lambda s: None, progress=False)


def test_grid_groups_top_up_short_sub_categories_and_fall_back_to_pairs(data, corpus):
    collate = make_collator(data, corpus, tia_grid=4)
    by_sub: dict[str, list[int]] = {}
    for i, r in enumerate(corpus.records):
        by_sub.setdefault(r.sub_category, []).append(i)
    # two products of each of three sub-categories: no sub-category fills a group, the remainders do
    indices = [i for members in list(by_sub.values())[:3] for i in members[:2]]
    groups = collate.grid_groups([corpus.records[i] for i in indices])
    assert groups == [[0, 1, 2, 3]]
    # groups are spread over the batch: a mixed batch (new rows, then replay rows) keeps both in the joint pass
    batch = SubCategoryBatchSampler([r.sub_category for r in corpus.records], 32, 4, seed=0).batch(0)
    spread = make_collator(data, corpus, tia_grid=2).grid_groups([corpus.records[i] for i in batch])
    assert len(spread) == 8 and min(min(g) for g in spread) < 8 and max(max(g) for g in spread) >= 24
    one = collate([indices[0]] * 3, step=0)  # one distinct product: nothing to rank, plain rows
    assert "tia_grid" not in one and one["tia_labels"].tolist() == [1, 1, 1]


def test_grid_tia_loss_ranks_by_the_match_log_odds():
    """Known answer: a grid whose diagonal has the highest log-odds ranks perfectly; the transposed
    mistake (text 0 best with image 1) does not, in either direction."""
    eye = torch.eye(2)
    batch = {"tia_labels": eye.flatten().long(), "tia_grid": torch.arange(4).reshape(1, 2, 2)}

    def loss(scores: torch.Tensor) -> tuple[float, dict[str, float]]:
        stats: dict[str, float] = {}
        logits = torch.stack([torch.zeros(4), scores.flatten()], 1)
        return float(PretrainingTask._tia_grid(logits, batch, stats)), stats

    right, right_stats = loss(4 * eye - 2)
    wrong, wrong_stats = loss(torch.tensor([[0.0, 3.0], [-2.0, 1.0]]))
    assert right_stats["tia_rank_acc"] == 1.0 and right_stats["tia_acc"] == 1.0
    assert wrong_stats["tia_rank_acc"] == 0.5 and right < 0.2 < wrong


def test_pair_ranking_ranks_each_negative_below_its_matched_partner():
    """Known answer. Rows 0 and 1 are matched; row 2 shares a side with row 0, row 3 with row 1; row 4
    has no partner and row 5's partner (row 4) is itself a negative. Only rows 2 and 3 are compared."""
    batch = {"tia_labels": torch.tensor([1, 1, 0, 0, 0, 0]), "tia_partner": torch.tensor([-1, -1, 0, 1, -1, 4])}
    rows = torch.ones(6, dtype=torch.bool)

    def loss(scores: list[float], rows: torch.Tensor = rows) -> tuple[float, dict[str, float]]:
        stats: dict[str, float] = {}
        logits = torch.stack([torch.zeros(int(rows.sum())), torch.tensor(scores)], 1)
        return float(PretrainingTask._pair_ranking(logits, batch, rows, stats)), stats

    right, right_stats = loss([3.0, 3.0, -3.0, -3.0, 9.0, 9.0])  # rows 4 and 5 score high but are in no pair
    wrong, wrong_stats = loss([3.0, -3.0, -3.0, 3.0, -9.0, -9.0])  # row 3 beats its partner, row 1
    assert right_stats["tia_pair_rank_acc"] == 1.0 and wrong_stats["tia_pair_rank_acc"] == 0.5
    assert right == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(-6.0))))
    assert wrong > 3.0
    # Only TIA's rows take part: without row 0, row 2 has no matched partner to be compared with.
    fewer = torch.tensor([False, True, True, True, True, True])
    _, fewer_stats = loss([3.0, -3.0, 3.0, 9.0, 9.0], fewer)
    assert fewer_stats["tia_pair_rank_acc"] == 0.0
    none, none_stats = loss([1.0, 1.0, 1.0, 1.0], torch.tensor([False, False, True, True, True, True]))
    assert none == 0.0 and "tia_pair_rank_acc" not in none_stats


def test_pair_ranking_on_todays_negatives_pairs_those_showing_a_matched_rows_picture(data, corpus):
    torch.manual_seed(0)
    model = FashionBertModel(named_config("tiny", data["tokenizer"], corpus.features.feature_dim, **TINY))
    batch = make_collator(data, corpus, tia_other_sub_share=0.0)(list(range(16)), step=0)
    labels, partner = batch["tia_labels"], batch["tia_partner"]
    paired = torch.nonzero(partner >= 0).squeeze(1)
    assert len(paired) and (labels[paired] == 0).all() and (labels[partner[paired]] == 1).all()
    # the partner shows the same product's picture (up to each row's own zeroed patches)
    kept = ~batch["zeroed_patches"][paired] & ~batch["zeroed_patches"][partner[paired]]
    same = (batch["patch_features"][paired] == batch["patch_features"][partner[paired]]).all(-1)
    assert same[kept].all()
    plain, _ = PretrainingTask(model, ["tia"])(batch)
    ranked, stats = PretrainingTask(model, ["tia"], tia_pair_ranking=True)(batch)
    assert "tia_pair_rank_acc" in stats and float(ranked["tia"]) > float(plain["tia"])
    with pytest.raises(ValueError, match="itc-hard"):
        PretrainingTask(model, tia_negatives="itc-hard", tia_pair_ranking=True)


def test_partnered_negatives_share_a_matched_rows_very_text_or_picture(data, corpus):
    collate = make_collator(data, corpus, tia_partnered=True, tia_other_sub_share=0.0)
    sides = {"text": 0, "picture": 0}
    for step in range(4):
        batch = collate(list(range(16)), step=step)
        labels, partner = batch["tia_labels"], batch["tia_partner"]
        assert ((partner >= 0) == (labels == 0)).all()  # every negative has a matched partner
        for row in torch.nonzero(labels == 0).squeeze(1).tolist():
            p = int(partner[row])
            assert labels[p] == 1
            same_text = torch.equal(batch["input_ids"][row], batch["input_ids"][p])
            same_picture = torch.equal(batch["patch_features"][row], batch["patch_features"][p])
            assert same_text != same_picture  # exactly one side shared, [MASK]s and zeroed patches included
            sides["text" if same_text else "picture"] += 1
            assert (batch["mlm_labels"][row] == IGNORE_INDEX).all() and not batch["mpm_mask"][row].any()
    assert sides["text"] > 0 and sides["picture"] > 0
    with pytest.raises(ValueError, match="tia_partnered"):
        make_collator(data, corpus, tia_partnered=True, clean_fraction=0.5)


def test_the_pair_ranking_binds_a_resume_only_when_on(tmp_path):
    cfg = PretrainConfig(tmp_path / "c.parquet", tmp_path / "feat", tmp_path / "out")
    assert "tia_pair_ranking" not in cfg.fingerprint()
    assert replace(cfg, tia_pair_ranking="both").fingerprint()["tia_pair_ranking"] == "both"


def test_task_returns_named_losses_and_each_can_be_switched_off(data, corpus):
    torch.manual_seed(0)
    model = FashionBertModel(named_config("tiny", data["tokenizer"], corpus.features.feature_dim, **TINY))
    batch = make_collator(data, corpus)(list(range(16)), step=0)
    losses, stats = PretrainingTask(model)(batch)
    assert set(losses) == {"mlm", "mpm", "tia", "itc"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    assert {"tia_acc", "itc_acc"} <= set(stats)
    sum(losses.values()).backward()
    assert model.patch_projection.weight.grad is not None and model.logit_scale.grad is not None
    only, _ = PretrainingTask(model, ["itc", "mpm"])(batch)
    assert set(only) == {"itc", "mpm"}
    with pytest.raises(ValueError):
        PretrainingTask(model, ["nsp"])


def _mining_batch(sub_category_ids: list[int], twins: torch.Tensor | None = None) -> tuple[dict, torch.Tensor]:
    """Four rows, row 0 matched and rows 1-3 negatives; image j's patches are all j+1, patch 0 zeroed."""
    eye = torch.eye(4, dtype=torch.bool)
    image_features = torch.arange(1, 5, dtype=torch.float32)[:, None, None].expand(4, 64, 3).clone()
    zeroed = torch.zeros(4, 64, dtype=torch.bool)
    zeroed[:, 0] = True
    batch = {"patch_features": image_features.clone(), "image_features": image_features, "zeroed_patches": zeroed,
             "tia_labels": torch.tensor([1, 0, 0, 0]), "itc_same_text": eye, "itc_same_product": eye,
             "sub_category_ids": torch.tensor(sub_category_ids), "negative_seed": torch.tensor(5)}
    if twins is not None:
        batch["attribute_twins"] = twins
    return batch, image_features


def _mined(patches: torch.Tensor, row: int) -> int:
    """Which image a row now shows (its zeroed patch stays zero)."""
    assert torch.all(patches[row, 0] == 0)
    values = patches[row, 1:].unique()
    assert len(values) == 1
    return int(values.item()) - 1


def _sharp_miner(data) -> tuple[PretrainingTask, torch.Tensor, torch.Tensor]:
    """An itc-hard task at temperature 1/100, and ITC vectors where text 1 ~ image 2, text 2 ~ image 3, text 3 ~ image 0."""
    model = FashionBertModel(named_config("tiny", data["tokenizer"], 3, **TINY))
    with torch.no_grad():
        model.logit_scale.fill_(np.log(100.0))
    return PretrainingTask(model, tia_negatives="itc-hard"), torch.eye(4, 8), torch.eye(4, 8)[[3, 0, 1, 2]]


def test_hard_negatives_follow_the_itc_similarity(data, corpus):
    """Known answer: each text is (at temperature 1/100) nearest one other image; that image becomes its negative."""
    task, text, image = _sharp_miner(data)
    model = task.model
    batch, image_features = _mining_batch([0, 0, 0, 0])
    patches, same_sub = task._hard_negatives(batch, text, image)
    assert torch.equal(patches[0], image_features[0])  # the positive row is untouched
    assert [_mined(patches, row) for row in (1, 2, 3)] == [2, 3, 0]
    assert same_sub == 1.0
    with pytest.raises(ValueError, match="itc task"):
        PretrainingTask(model, ["mlm", "tia"], tia_negatives="itc-hard")
    with pytest.raises(ValueError, match="tia_negatives"):
        PretrainingTask(model, tia_negatives="random")
    with pytest.raises(ValueError, match="tia_hard_share"):
        PretrainingTask(model, tia_negatives="itc-hard", tia_hard_share=1.5)


def test_hard_negatives_stay_in_the_sub_category_and_skip_attribute_twins(data, corpus):
    """The nearest image of another sub-category or of an attribute twin is passed over for the next one."""
    task, text, image = _sharp_miner(data)
    # sub-categories 0,0,1,1: text 1's nearest (image 2) is another sub-category -> image 0, its only same-sub one;
    # text 3's nearest (image 0) likewise -> image 2. Text 2 keeps image 3.
    batch, _ = _mining_batch([0, 0, 1, 1])
    patches, same_sub = task._hard_negatives(batch, text, image)
    assert [_mined(patches, row) for row in (1, 2, 3)] == [0, 3, 2]
    assert same_sub == 1.0
    # a row alone in its sub-category (row 1: sub 2) may mine from any other product: its nearest, image 2
    batch, _ = _mining_batch([0, 2, 1, 1])
    patches, same_sub = task._hard_negatives(batch, text, image)
    assert _mined(patches, 1) == 2
    # rows 2 and 3 are attribute twins: text 2 cannot take image 3 and text 3 cannot take image 2
    twins = torch.eye(4, dtype=torch.bool)
    twins[2, 3] = twins[3, 2] = True
    batch, _ = _mining_batch([0, 0, 0, 0], twins)
    patches, _ = task._hard_negatives(batch, text, image)
    assert _mined(patches, 2) != 3 and _mined(patches, 3) != 2
    assert _mined(patches, 1) == 2
    # a negative row the collator showed another sub-category keeps its image: it teaches the product type
    batch, _ = _mining_batch([0, 0, 0, 0])
    batch["tia_other_sub_rows"] = torch.tensor([False, True, False, False])
    patches, _ = task._hard_negatives(batch, text, image)
    assert torch.equal(patches[1], batch["patch_features"][1]) and _mined(patches, 2) == 3


def test_hard_share_mines_only_part_of_the_negative_rows(data, corpus):
    """share 0 mines nothing; share 0.5 leaves some rows of a large batch with their own image (seeded)."""
    model = FashionBertModel(named_config("tiny", data["tokenizer"], 3, **TINY))
    text = torch.eye(4, 8)
    image = torch.eye(4, 8)[[3, 0, 1, 2]]
    batch, image_features = _mining_batch([0, 0, 0, 0])
    patches, same_sub = PretrainingTask(model, tia_negatives="itc-hard", tia_hard_share=0.0)._hard_negatives(batch, text, image)
    assert torch.equal(patches, batch["patch_features"]) and np.isnan(same_sub)
    n = 200
    eye = torch.eye(n, dtype=torch.bool)
    big = {"patch_features": torch.zeros(n, 64, 3), "image_features": torch.arange(1, n + 1, dtype=torch.float32)[:, None, None]
           .expand(n, 64, 3).clone(), "zeroed_patches": torch.zeros(n, 64, dtype=torch.bool),
           "tia_labels": torch.zeros(n, dtype=torch.long), "itc_same_text": eye, "itc_same_product": eye,
           "sub_category_ids": torch.zeros(n, dtype=torch.long), "negative_seed": torch.tensor(3)}
    vectors = torch.nn.functional.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    task = PretrainingTask(model, tia_negatives="itc-hard", tia_hard_share=0.5)
    first, _ = task._hard_negatives(big, vectors, vectors)
    again, _ = task._hard_negatives(big, vectors, vectors)
    assert torch.equal(first, again)  # seeded by the batch
    mined = (first.abs().sum((1, 2)) > 0).float().mean()
    assert 0.35 < mined < 0.65


def _cfg(data, out, **kw) -> PretrainConfig:
    base = dict(catalog=data["catalog_path"], features=data["root"] / "features", out=out, steps=6, batch_size=8,
                warmup_steps=2, save_every=100, model_overrides=TINY, vocab_size=600, device="cpu")
    base.update(kw)
    return PretrainConfig(**base)


def test_pretrain_writes_a_loadable_checkpoint_log_and_plot(data, tmp_path):
    result = pretrain(_cfg(data, tmp_path / "run"), echo=lambda s: None, progress=False)
    assert result.steps_done == 6 and result.stopped_by == "steps"
    ckpt = FashionBert.from_pretrained(tmp_path / "run")
    assert ckpt.encode_text(["红色连衣裙"]).shape == (1, 32)
    # the config says which CNN made the features it reads, so the indexer and the API extract the same
    made_with = json.loads((data["root"] / "features" / "features_info.json").read_text())["config"]
    assert (ckpt.config.image_encoder, ckpt.config.patch_mode) == (made_with["encoder"], made_with["mode"])
    assert ckpt.config.image_encoder == DEFAULT_IMAGE_ENCODER and ckpt.config.patch_feature_dim == 432
    with (tmp_path / "run" / "train_log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(float(r["step"])) for r in rows] == [1, 2, 3, 4, 5, 6]
    # no --lr: the named config's peak learning rate (tiny: 1e-3), reached after the warm-up
    assert max(float(r["lr"]) for r in rows) == pytest.approx(DEFAULT_LEARNING_RATES["tiny"])
    # a step whose batch had nothing to score for a task has no weight for it: the rest sum to 1
    weights = [sum(float(r[f"w.{k}"]) for k in ("mlm", "mpm", "tia", "itc", "view") if r[f"w.{k}"]) for r in rows]
    np.testing.assert_allclose(weights, 1.0, atol=1e-5)  # ω logged per step and on the simplex
    assert any(r["loss.view"] for r in rows)  # the view contrast is on by default (with itc)
    assert (tmp_path / "run" / "train_log.png").stat().st_size > 0
    training = json.loads((tmp_path / "run" / "training_config.json").read_text())["training"]
    assert training["main_view_share"] == 1.0 and training["view_contrast_share"] == 0.25  # the record says what ran


@pytest.mark.parametrize("negatives", [{"tia_negatives": "sub-category"}, {"tia_negatives": "itc-hard"}, {"tia_grid": 2},
                                       {"tia_pair_ranking": "both"}],
                         ids=["sub-category", "itc-hard", "grid", "pair-ranking"])
def test_resume_after_interruption_is_an_identical_continuation(data, tmp_path, negatives):
    pretrain(_cfg(data, tmp_path / "straight", **negatives), echo=lambda s: None, progress=False)
    stopped = pretrain(_cfg(data, tmp_path / "resumed", stop_at_step=3, **negatives), echo=lambda s: None,
                       progress=False)
    assert stopped.stopped_by == "stop_at_step" and not (tmp_path / "resumed" / "model.safetensors").exists()
    lines: list[str] = []
    resumed = pretrain(_cfg(data, tmp_path / "resumed", **negatives), echo=lines.append, progress=False)
    assert resumed.resumed_from == 3 and "pretrain: resuming from step 3" in lines
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match=r"another configuration \(lr: None -> 0\.001\)"):  # says what differs
        pretrain(_cfg(data, tmp_path / "resumed", lr=1e-3, **negatives), echo=lambda s: None, progress=False)


def test_pretrain_with_view_contrast_logs_its_loss_and_needs_itc(data, tmp_path):
    result = pretrain(_cfg(data, tmp_path / "views", main_view_share=1.0, view_contrast_share=0.5),
                      echo=lambda s: None, progress=False)
    assert "view" in result.last_losses and np.isfinite(result.last_losses["view"])
    with (tmp_path / "views" / "train_log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert all(r["loss.view"] and r["w.view"] for r in rows)  # weighted beside the other four
    with pytest.raises(ValueError, match="itc"):
        pretrain(_cfg(data, tmp_path / "no_itc", tasks=("mlm", "tia"), view_contrast_share=0.5),
                 echo=lambda s: None, progress=False)


@pytest.mark.parametrize("settings, message", [
    ({"tia_pair_ranking": "texts"}, "must be one of"),
    ({"tia_pair_ranking": "image", "tia_grid": 2}, "tia-grid"),
    ({"tia_pair_ranking": "both", "clean_fraction": 0.5}, "clean_fraction"),
    ({"tia_pair_ranking": "image", "tia_negatives": "itc-hard"}, "itc-hard"),
], ids=["unknown", "grid", "clean-rows", "itc-hard"])
def test_pair_ranking_refuses_what_it_cannot_pair(data, tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        pretrain(_cfg(data, tmp_path / "bad", **settings), echo=lambda s: None, progress=False)
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_the_view_contrast_default_follows_the_itc_task(data, tmp_path):
    assert _cfg(data, tmp_path).resolved().view_contrast_share == 0.25
    assert _cfg(data, tmp_path, tasks=("mlm", "mpm", "tia")).resolved().view_contrast_share == 0.0
    assert _cfg(data, tmp_path, view_contrast_share=0.0).resolved().view_contrast_share == 0.0  # explicit: kept
    assert _cfg(data, tmp_path, view_contrast_share=0.5).resolved().view_contrast_share == 0.5
    result = pretrain(_cfg(data, tmp_path / "no_itc", tasks=("mlm", "mpm", "tia"), steps=2), echo=lambda s: None,
                      progress=False)  # no itc and no explicit share: runs, without the view loss
    assert "view" not in result.last_losses and "itc" not in result.last_losses


def test_time_budget_stops_training(data, tmp_path):
    result = pretrain(_cfg(data, tmp_path / "budget", steps=10_000, max_minutes=0.15), echo=lambda s: None, progress=False)
    assert result.stopped_by == "max_minutes" and 0 < result.steps_done < 10_000
    assert (tmp_path / "budget" / "model.safetensors").is_file()
    # The learning rate decays by the clock: it anneals towards zero at the deadline, not at step 10,000.
    with (tmp_path / "budget" / "train_log.csv").open() as fh:
        lrs = [float(r["lr"]) for r in csv.DictReader(fh)]
    # A few steps are enough to tell the schedules apart (a loaded machine manages three in 9 s): decayed
    # by step count, the learning rate after step 3 of 10,000 would still be near its peak.
    assert len(lrs) >= 3, "tiny steps should be fast enough for a few in 9 s"
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] < 0.25 * max(lrs)


def test_torchrun_two_cpu_processes_train_in_sync(data, tmp_path):
    """`torchrun --nproc_per_node 2` on gloo: both ranks step together and rank 0 writes the checkpoint."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pipelines",
        "pretrain", "--catalog", str(data["catalog_path"]), "--features", str(data["root"] / "features"),
        "--out", str(out), "--steps", "3", "--batch-size", "8", "--warmup-steps", "1", "--device", "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((out / "training_config.json").read_text())
    assert info["world_size"] == 2 and info["steps_done"] == 3  # the in-sync checksum check passed too
    assert FashionBert.from_pretrained(out).encode_text(["red dress"]).shape[0] == 1
    assert done.stdout.count("pretrain: 3 steps") == 1  # one voice per job
