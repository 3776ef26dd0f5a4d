"""ReXGroundingCT imaging half: preprocessing, mask round trip, metrics, train-grounding
(Ray Train, resume), segment (Ray Data, a corrupt volume) and eval-grounding, on tiny
phantoms (40x40x16, axial resize to 32x32, a narrow U-Net)."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

SHAPE = (40, 40, 16)
AXIAL = (32, 32)  # != SHAPE[:2], so the inverse resize is exercised
CROP = (32, 32, 16)
FEATURES = (8, 8, 16, 16, 32, 8)
N_PHANTOMS = 3


def _parquet(folder: Path) -> pd.DataFrame:
    files = sorted(folder.glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


# ----------------------------------------------------------------------------- preprocessing

def test_hu_conversion_and_window_match_the_formula():
    from ctray.tasks.grounding.preprocess import PreprocessConfig, build_preprocess, make_item

    rng = np.random.default_rng(0)
    raw = rng.integers(-200, 3200, size=(6, 5, 4)).astype(np.int16)
    slope, intercept, (lo, hi) = 1.25, -1024.0, (-600.0, 1500.0)
    cfg = PreprocessConfig(axial_size=None, orientation=None, window=(lo, hi))
    out = build_preprocess(cfg)(make_item(raw, np.eye(4), slope, intercept))["image"]
    hu = raw.astype(np.float64) * slope + intercept
    expected = np.clip((hu - lo) / (hi - lo), 0.0, 1.0)
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-6)
    assert (expected == 0).any() and (expected == 1).any() and ((expected > 0) & (expected < 1)).any()

    # Missing rescale values (None, or NaN as a CSV manifest gives them) use the defaults.
    for missing in (None, float("nan")):
        got = build_preprocess(cfg)(make_item(raw, np.eye(4), missing, missing))["image"]
        np.testing.assert_allclose(got[0].numpy(), np.clip((raw - lo) / (hi - lo), 0, 1), atol=1e-6)


def test_raw_and_header_scaled_phantoms_read_back_as_the_float_hu(tmp_path):
    from ctray.io.volumes import load_volume
    from ctray.tasks.grounding.preprocess import ToHUd

    from ctray.tasks.grounding.phantoms import write_phantom_set

    slope, intercept = 2.0, -1024.0
    # Same seed, three storages: the float file holds the HU exactly.
    sets = {storage: write_phantom_set(tmp_path / storage, 1, shape=(24, 24, 8), seed=3,
                                       storage=storage, slope=slope, intercept=intercept)
            for storage in ("float", "raw_int16", "scaled_int16")}
    hu, _, _ = load_volume(sets["float"].volume_uri[0])
    raw, _, raw_info = load_volume(sets["raw_int16"].volume_uri[0])
    row = sets["raw_int16"].iloc[0]
    assert raw_info["stored_dtype"] == "int16" and (row.slope, row.intercept) == (slope, intercept)
    converted = ToHUd("image")({"image": raw, "slope": row.slope, "intercept": row.intercept})["image"]
    # int16 storage rounds (HU - intercept) / slope: at most half a step of `slope` HU off.
    assert np.abs(converted - hu).max() <= slope / 2 + 1e-4
    assert np.abs(raw - hu).max() > 500  # the raw values really needed the rescale

    header_scaled, _, info = load_volume(sets["scaled_int16"].volume_uri[0])
    assert info["scl_slope"] == slope and pd.isna(sets["scaled_int16"].slope[0])
    assert np.abs(header_scaled - hu).max() <= slope / 2 + 1e-4


def test_mask_round_trip_keeps_affine_shape_and_position(tmp_path):
    """A mask pushed through the preprocessing (LPS scan → RAS, 40x36 → 32x32) and
    mapped back lands on the original voxels, and saves with the scan's affine."""
    from ctray.io.volumes import load_volume, save_mask
    from ctray.metrics.segmentation import dice_score
    from ctray.tasks.grounding.inference import mask_to_original
    from ctray.tasks.grounding.preprocess import PreprocessConfig, build_preprocess, make_item

    shape = (40, 36, 12)
    affine = np.array([[-0.8, 0, 0, 20.0], [0, -0.9, 0, 15.0], [0, 0, 2.5, -10.0], [0, 0, 0, 1]])
    vol = np.random.default_rng(1).normal(0, 300, shape).astype(np.float32)
    src = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), src)
    volume, aff, info = load_volume(src)
    assert info["axcodes"] == "LPS"
    gt = np.zeros(shape, np.uint8)
    gt[5:17, 20:31, 3:9] = 1  # off-centre, so a flip or shift would show

    cfg = PreprocessConfig(axial_size=AXIAL)
    transform = build_preprocess(cfg, label_keys=["label"])
    item = transform(make_item(volume, aff, labels={"label": gt}))
    assert tuple(item["image"].shape) == (1, *AXIAL, shape[2])
    back = mask_to_original(item["label"][0].numpy(), item["image"], transform)
    assert back.shape == shape and back.dtype == np.uint8
    # Nearest-neighbour labels sampled off the image's centres shifted this box by a voxel
    # after the LPS flip (Dice 0.87); aligned sampling only rounds the border.
    assert dice_score(back, gt) > 0.9
    np.testing.assert_allclose(np.argwhere(back).mean(0), np.argwhere(gt).mean(0), atol=0.75)

    out = save_mask(back, aff, tmp_path / "masks" / "m.nii.gz", header=info["header"])
    img = nib.load(out)
    assert img.shape == shape and img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    assert "".join(nib.aff2axcodes(img.affine)) == "LPS"
    np.testing.assert_array_equal(np.asarray(img.dataobj), back)


# ----------------------------------------------------------------------------- metrics

def test_dice_hit_and_size_groups_on_hand_computed_cases():
    from ctray.metrics.segmentation import (dice_score, finding_size, grounding_table, hit_rate,
                                            size_groups)

    gt = np.zeros((4, 4, 4), np.uint8)
    gt[0, 0, :] = 1
    gt[0, 1, :2] = 1  # 6 voxels
    pred = np.zeros_like(gt)
    pred[0, 0, 1:] = 1
    pred[3, 3, 3] = 1  # 4 voxels, 3 of them on the GT
    assert dice_score(pred, gt) == pytest.approx(2 * 3 / (4 + 6))
    assert dice_score(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    assert dice_score(pred, np.zeros_like(gt)) == 0.0
    assert hit_rate([0.04, 0.05, 0.06, 0.2], 0.05) == 0.5  # strictly above
    assert hit_rate([0.04, 0.05, 0.06, 0.2], 0.10) == 0.25
    assert finding_size(50, 1000) == 0.05
    # p50 = 4.5, p75 = 6.25 over 1..8
    groups = size_groups(np.arange(1, 9) / 100)
    assert list(groups) == ["small"] * 4 + ["medium"] * 2 + ["large"] * 2

    df = pd.DataFrame({"finding_id": list("abcd"), "dice": [0.0, 0.08, 0.5, 1.0],
                       "category": ["1e", "2d", "2d", "2b"]})
    from ctray.tasks.grounding.eval_job import category_focality

    table = grounding_table(df, n_bootstrap=200, focality_of=category_focality).loc["all"]
    assert table["n"] == 4 and table["non_focal"] == 0.0
    assert table["focal"] == pytest.approx((0.08 + 0.5 + 1.0) / 3)
    assert table["average"] == pytest.approx(1.58 / 4)
    assert table["hit5"] == 0.75 and table["hit10"] == 0.5
    assert table["average_ci_low"] <= table["average"] <= table["average_ci_high"]
    assert table["share_non_focal"] == 0.25


# ----------------------------------------------------------------------------- jobs

@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from ctray.tasks.grounding.model import save_tiny_text_encoder
    from ctray.tasks.grounding.phantoms import write_phantom_set

    root = tmp_path_factory.mktemp("grounding")
    # raw_int16: the slope/intercept columns must reach ToHUd in training and segment.
    manifest = write_phantom_set(root / "phantoms", N_PHANTOMS, shape=SHAPE, seed=0,
                                 storage="raw_int16")
    encoder = save_tiny_text_encoder(root / "encoder", manifest.finding_text.tolist())
    return {"root": root, "manifest": manifest, "manifest_path": root / "phantoms" / "manifest.csv",
            "encoder": encoder}


def _train_config(ph, epochs: int):
    from ctray.tasks.grounding.train_job import TrainGroundingConfig

    return TrainGroundingConfig.model_validate({
        "run": {"output": str(ph["root"] / "train")},
        "manifest": {"path": str(ph["manifest_path"])},
        "text_encoder": ph["encoder"],
        "preprocess": {"axial_size": list(AXIAL)},
        "model": {"features": list(FEATURES)},
        "training": {"epochs": epochs, "learning_rate": 3e-3, "batch_size": 2,
                     "crop_size": list(CROP), "num_samples": 2, "cache_rate": 1.0},
        "scaling": {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 1.0},
    })


@pytest.fixture(scope="module")
def trained(ray_local, phantoms):
    from ctray.tasks.grounding.train_job import run_train_grounding

    first = run_train_grounding(_train_config(phantoms, epochs=1))
    # Same checkpoint name and storage: Ray Train hands back the epoch-1 checkpoint.
    second = run_train_grounding(_train_config(phantoms, epochs=3))
    return first, second


@pytest.mark.extended
def test_train_grounding_lowers_the_loss_and_resumes(trained, phantoms):
    from ctray.errors import UserError
    from ctray.tasks.grounding.model_dir import load_grounding_model
    from ctray.tasks.grounding.train_job import run_train_grounding

    first, second = trained
    assert first["started_at_epoch"] == 1 and first["epochs_run"] == [1]
    assert second["started_at_epoch"] == 2 and second["epochs_run"] == [2, 3]
    history = second["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [h["resumed_from_epoch"] for h in history] == [0, 1, 1]
    # The resumed run carries the first run's epoch 1 unchanged.
    assert history[0]["train_loss"] == pytest.approx(first["history"][0]["train_loss"])
    # 2 ranks x ceil(15 triples / 2) x 2 crops
    n_triples = len(phantoms["manifest"])
    assert all(h["train_crops"] == 2 * math.ceil(n_triples / 2) * 2 for h in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]

    model, meta, local = load_grounding_model(second["model_dir"])
    assert tuple(meta.roi_size) == CROP and tuple(meta.features) == FEATURES
    assert meta.text_encoder == "text_encoder" and (Path(local) / "text_encoder").is_dir()
    assert meta.metrics["final_train_loss"] == pytest.approx(history[-1]["train_loss"])

    changed = _train_config(phantoms, epochs=4).model_copy(update={"text_normalize": True})
    with pytest.raises(UserError, match="different training configuration"):
        run_train_grounding(changed)


@pytest.fixture(scope="module")
def segment_model(phantoms):
    """A seeded, untrained FiLM U-Net saved as train-grounding saves one: what segment
    checks (scan grid, one read per volume, job = in-process inference, prompts reach
    the model) does not need a trained model, and training (Ray Train, two runs) is
    the extended tier's test_train_grounding_lowers_the_loss_and_resumes."""
    import torch

    from ctray.tasks.grounding.model import FiLM
    from ctray.tasks.grounding.model_dir import (GroundingModelMeta, build_model,
                                                 save_grounding_model)
    from ctray.tasks.grounding.preprocess import PreprocessConfig

    torch.manual_seed(0)
    meta = GroundingModelMeta(text_encoder=phantoms["encoder"], text_dim=32,
                              features=FEATURES, preprocess=PreprocessConfig(axial_size=AXIAL),
                              roi_size=CROP)
    model = build_model(meta)
    # FiLM starts at zero (text has no effect until trained); random FiLM weights stand
    # in for trained ones so that different prompts give different masks.
    for film in (m for m in model.modules() if isinstance(m, FiLM)):
        torch.nn.init.normal_(film.proj.weight, std=0.5)
    return save_grounding_model(phantoms["root"] / "segment_model", model.state_dict(), meta)


@pytest.fixture(scope="module")
def segmented(segment_model, phantoms):
    """segment over the phantoms plus a truncated .nii.gz with two findings."""
    import torch

    from ctray.io.volumes import load_volume
    from ctray.tasks.grounding.inference import mask_to_original, predict_logits, segment_volume
    from ctray.tasks.grounding.model import TextEncoder
    from ctray.tasks.grounding.preprocess import build_preprocess, preprocess_volume
    from ctray.tasks.grounding.model_dir import load_grounding_model, resolve_encoder
    from ctray.tasks.grounding.segment_job import SegmentConfig, run_segment

    root, manifest = phantoms["root"], phantoms["manifest"]
    good = Path(manifest.volume_uri[0])
    corrupt = good.parent / "phantom_corrupt.nii.gz"
    data = good.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    extra = manifest[manifest.volume_id == manifest.volume_id[0]].head(2).copy()
    extra["volume_id"] = "phantom_corrupt"
    extra["volume_uri"] = str(corrupt)
    extra["finding_id"] = ["phantom_corrupt_a", "phantom_corrupt_b"]
    # Shuffled: the job itself must bring a volume's findings together.
    rows = pd.concat([manifest, extra], ignore_index=True).sample(frac=1.0, random_state=0)
    rows.to_csv(root / "segment_manifest.csv", index=False)

    # Threshold at the 80th percentile of the model's own probabilities so the masks
    # below are not all empty.
    model, meta, local = load_grounding_model(segment_model)
    encoder = TextEncoder(resolve_encoder(meta, local))
    transform = build_preprocess(meta.preprocess)
    vid = manifest.volume_id[1]
    first = manifest[manifest.volume_id == vid]
    volume, affine, _ = load_volume(first.volume_uri.iloc[0])
    pre = preprocess_volume(volume, affine, slope=first.slope.iloc[0],
                            intercept=first.intercept.iloc[0], transform=transform)
    emb = encoder.encode(first.finding_text.tolist())
    logits = predict_logits(model, pre, emb, CROP, 2, sw_device="cpu")
    threshold = float(torch.quantile(torch.sigmoid(logits).flatten()[::7], 0.8))
    reference = mask_to_original(segment_volume(model, pre, emb, CROP, 2, sw_device="cpu",
                                                threshold=threshold), pre, transform)

    cfg = SegmentConfig.model_validate({
        "run": {"output": str(root / "segment")},
        "manifest": {"path": str(root / "segment_manifest.csv")},
        "model": segment_model,
        "inference": {"threshold": threshold, "sw_batch_size": 2, "prompts_per_pass": 2},
        # Whole-CPU actor on a 2-CPU Ray: the light read/write tasks keep the other.
        "resources": {"num_cpus": 1.0, "batch_size": 32},
    })
    summary = run_segment(cfg)
    return {"cfg": cfg, "summary": summary, "rows": rows, "corrupt": corrupt,
            "reference": dict(zip(first.finding_id, reference)), "threshold": threshold}


def test_segment_writes_masks_on_the_scan_grid_and_records_the_corrupt_volume(segmented, phantoms):
    from ctray.metrics.segmentation import dice_score
    from ctray.tasks.grounding.segment_job import run_segment

    rows, summary = segmented["rows"], segmented["summary"]
    out = Path(summary["output"])
    n_total, n_bad = len(rows), 2
    assert (summary["ok"], summary["failed"]) == (n_total - n_bad, n_bad)
    results, errors = _parquet(out / "results"), _parquet(out / "errors")
    assert sorted(errors.finding_id) == ["phantom_corrupt_a", "phantom_corrupt_b"]
    assert all("phantom_corrupt.nii.gz" in e for e in errors.error)
    assert set(errors.error_type) == {"VolumeReadError"}
    assert sorted(results.finding_id) == sorted(rows.finding_id[rows.volume_id != "phantom_corrupt"])
    assert not list((out / "masks").glob("phantom_corrupt*"))

    per_volume = rows.groupby("volume_id").size()
    for r in results.itertuples():
        img = nib.load(r.mask_uri)
        src = nib.load(r.volume_uri)
        assert img.shape == src.shape == SHAPE
        np.testing.assert_allclose(img.affine, src.affine, atol=1e-6)
        mask = np.asarray(img.dataobj)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert r.pred_voxels == int(mask.sum()) and r.scan_voxels == math.prod(SHAPE)
        # One read per volume: every finding of a scan shared its batch.
        assert r.findings_per_read == per_volume[r.volume_id]
        assert r.gt_mask_uri.endswith(f"{r.finding_id}.nii.gz")  # the input's GT column, renamed
        if r.finding_id in segmented["reference"]:
            ref = segmented["reference"][r.finding_id]
            assert ref.sum() > 0
            assert dice_score(mask, ref) > 0.98, r.finding_id
    # Different prompts, different masks: the text embedding reaches the model.
    refs = list(segmented["reference"].values())
    assert any(not np.array_equal(refs[0], m) for m in refs[1:])

    manifest = (out / "manifest.json").read_text()
    assert '"job": "segment"' in manifest
    again = run_segment(segmented["cfg"])
    assert (again["ok"], again["failed"], again["skipped"]) == (0, 0, n_total)


def test_ground_eval_scores_segment_outputs_and_an_oracle(segmented, phantoms):
    from ctray.metrics.segmentation import dice_score
    from ctray.tasks.grounding.eval_job import GroundEvalConfig, run_ground_eval

    root = phantoms["root"]
    rows = segmented["rows"]
    gt_manifest = root / "segment_manifest.csv"
    oracle = rows[["finding_id", "mask_uri"]]
    oracle.to_csv(root / "oracle.csv", index=False)
    cfg = GroundEvalConfig.model_validate({
        "run": {"output": str(root / "eval")},
        "predictions": [{"path": segmented["summary"]["output"], "label": "film_unet"},
                        {"path": str(root / "oracle.csv"), "label": "oracle"}],
        "ground_truth": {"path": str(gt_manifest)},
    })
    summary = run_ground_eval(cfg)
    out = Path(summary["output"])
    per = pd.read_csv(out / "per_finding.csv")
    assert len(per) == 2 * len(rows)
    assert summary["without_prediction"] == {"film_unet": 2, "oracle": 0}

    results = _parquet(Path(segmented["summary"]["output"]) / "results").set_index("finding_id")
    gt_by_id = rows.set_index("finding_id").mask_uri
    mine = per[per.method == "film_unet"].set_index("finding_id")
    for fid, r in mine.iterrows():
        gt = np.asarray(nib.load(gt_by_id[fid]).dataobj)
        assert r.gt_voxels == int(gt.sum()) and r.scan_voxels == gt.size
        assert r["size"] == pytest.approx(gt.sum() / gt.size)
        if fid in results.index:
            pred = np.asarray(nib.load(results.mask_uri[fid]).dataobj)
            assert r.dice == pytest.approx(dice_score(pred, gt))
        else:  # the corrupt scan: no prediction scores 0
            assert r.dice == 0.0 and r.problem == "no prediction"
    assert per[per.method == "oracle"].dice.eq(1.0).all()

    table = pd.read_csv(out / "table4.csv", index_col=0)
    assert table.loc["film_unet", "n"] == len(rows)
    assert table.loc["film_unet", "average"] == pytest.approx(mine.dice.mean())
    assert table.loc["film_unet", "hit10"] == pytest.approx((mine.dice > 0.10).mean())
    focal = mine.category.str.startswith("2")
    assert table.loc["film_unet", "focal"] == pytest.approx(mine.dice[focal].mean())
    assert table.loc["film_unet", "non_focal"] == pytest.approx(mine.dice[~focal].mean())
    assert table.loc["oracle", "average"] == 1.0 and table.loc["oracle", "hit5"] == 1.0
    lo, hi = table.loc["film_unet", ["average_ci_low", "average_ci_high"]]
    assert lo <= table.loc["film_unet", "average"] <= hi

    by_size = pd.read_csv(out / "by_size.csv")
    assert set(by_size.size_group) == {"small", "medium", "large"}
    assert by_size.groupby("method").n.sum().to_dict() == {"film_unet": len(rows), "oracle": len(rows)}
    md = (out / "table4.md").read_text()
    assert "| film_unet |" in md and "| oracle |" in md and "Non-focal (" in md
    assert (out / "per_category.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_relative_manifest_paths_resolve_from_the_launch_directory(tmp_path, monkeypatch):
    from ctray.tasks.grounding.segment_job import ManifestInput, read_manifest

    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"volume_uri": ["vols/a.nii.gz", "s3://bucket/b.nii.gz"],
                  "finding_id": ["a_1", "b_1"], "finding_text": ["x", "y"],
                  "mask_uri": ["masks/a_1.nii.gz", None]}).to_csv("m.csv", index=False)
    df = read_manifest(ManifestInput(path="m.csv")).set_index("finding_id")
    # Ray workers do not share the driver's working directory: local paths become absolute.
    assert df.loc["a_1", "volume_uri"] == str(tmp_path / "vols" / "a.nii.gz")
    assert df.loc["a_1", "gt_mask_uri"] == str(tmp_path / "masks" / "a_1.nii.gz")
    assert df.loc["b_1", "volume_uri"] == "s3://bucket/b.nii.gz"
    assert pd.isna(df.loc["b_1", "gt_mask_uri"])


def test_segment_reads_each_scan_once_and_an_empty_volume_cell_is_a_row_error(
        segmented, phantoms, tmp_path):
    import json

    from ctray.tasks.grounding.segment_job import SegmentConfig, run_segment

    rows = phantoms["manifest"].copy()
    blank = rows.head(1).assign(finding_id="no_volume", volume_uri="", volume_id="none")
    pd.concat([rows, blank], ignore_index=True).to_csv(tmp_path / "m.csv", index=False)
    cfg = SegmentConfig.model_validate({
        **segmented["cfg"].model_dump(mode="json"),
        "run": {"output": str(tmp_path / "out")}, "masks_dir": None,
        "manifest": {"path": str(tmp_path / "m.csv")},
        # Batches of 3 findings: every 5-finding phantom straddles two batches.
        "resources": {"num_cpus": 1.0, "batch_size": 3}})
    summary = run_segment(cfg)
    errors = _parquet(tmp_path / "out" / "errors")
    assert (summary["ok"], summary["failed"]) == (len(rows), 1), errors.error.head(3).tolist()
    assert list(errors.finding_id) == ["no_volume"]
    assert "empty 'volume_uri'" in errors.error.iloc[0]
    replay = json.loads(errors.input_json.iloc[0], parse_constant=lambda c: pytest.fail(c))
    assert replay["volume_uri"] is None and replay["finding_id"] == "no_volume"
    results = _parquet(tmp_path / "out" / "results")
    assert (results.groupby("volume_id")["findings_per_read"].min() < 5).all()  # split batches
    assert (results.groupby("volume_id")["read_id"].nunique() == 1).all()  # one read each
    assert results["read_id"].nunique() == N_PHANTOMS
