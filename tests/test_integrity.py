"""Nothing silently wrong (issue 12): bad input ends in one `ctray:` line with nothing
written, undecodable ids stay row errors, every shard of a table has one schema, and the
errors table's input rows are strict JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ctray.cli import main
from ctray.io.corpus import CorpusConfig, read_corpus
from ctray.pipeline.runner import RunSpec, run_pipeline
from pipeline_helpers import CountingLength

HEADER = b"VolumeName,ClinicalInformation_EN,Technique_EN,Findings_EN,Impressions_EN\n"


def rows(n: int, start: int = 0) -> bytes:
    return b"".join(f"r{i:03d},ci,t,Finding {i}.,Impression {i}.\n".encode()
                    for i in range(start, start + n))


BAD_FILES = {
    "empty": (b"", r"empty file \(0 bytes\)"),
    "duplicate": (HEADER + rows(3) + b"r001,ci,t,Again.,Again.\n",
                  r"duplicate row keys in column 'VolumeName': 'r001' \(bad.csv row 3, bad.csv row 5\)"),
    "missing_column": (b"VolumeName,Findings_EN\nr000,Finding.\n",
                       r"missing column\(s\) \['ClinicalInformation_EN', 'Technique_EN', 'Impressions_EN'\]"),
    "malformed": (HEADER + rows(2) + b"r002,ci,t,one, too many,fields\n" + rows(2, 3),
                  r"malformed CSV: row 4 has 6 fields, the header 5"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_input_file_is_one_ctray_line_exit_2_and_nothing_written(ray_local, tmp_path,
                                                                        capsys, case):
    data, message = BAD_FILES[case]
    csv = tmp_path / "bad.csv"
    csv.write_bytes(data)
    out = tmp_path / "out"
    code = main(["stats-text", "--set", f"corpus.path={csv}", "--set", f"run.output={out}",
                 "--set", "lang=en"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"ctray: {csv}: "), err
    assert pytest.importorskip("re").search(message, err[0]), err[0]
    assert not out.exists()


def test_header_only_input_warns_instead_of_a_silent_empty_run(ray_local, tmp_path, capsys):
    csv = tmp_path / "header.csv"
    csv.write_bytes(HEADER)
    out = tmp_path / "out"
    code = main(["stats-text", "--set", f"corpus.path={csv}", "--set", f"run.output={out}",
                 "--set", "lang=en"])
    assert code == 0
    assert f"ctray: warning: {csv} has a header but no rows" in capsys.readouterr().err


def test_an_undecodable_id_is_a_row_error_and_other_ids_stay_plain(ray_local, tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_bytes(HEADER + rows(3) + b"valid_\xe9,ci,t,Finding x.,Impression x.\n" + rows(2, 3))
    out = tmp_path / "out"
    summary = run_pipeline(read_corpus(CorpusConfig(path=str(csv))),
                           [CountingLength(str(tmp_path / "log"))], RunSpec(job="t", output=str(out)))
    assert (summary.ok, summary.failed) == (5, 1)
    assert sorted(pd.read_parquet(out / "results")["report_id"]) == [f"r{i:03d}" for i in range(5)]
    err = pd.read_parquet(out / "errors")
    assert list(err["report_id"]) == ["valid_\\xe9"]
    assert "field 'VolumeName' not valid UTF-8 (byte 0xe9 at offset 6)" in err["error"].iloc[0]
    assert err["stage"].iloc[0] == "read"


def _schemas(folder: Path) -> list:
    return [pq.read_schema(f).remove_metadata() for f in sorted(folder.glob("*.parquet"))]


def test_every_shard_of_a_table_has_one_schema_and_keeps_int_columns(ray_local, tmp_path):
    # r002 fails and has no Technique text: its 1-row retry shard would otherwise hold
    # a null-typed column, and the shard it shared with finished rows a float n_chars.
    csv = tmp_path / "c.csv"
    csv.write_bytes(HEADER + rows(2) + b"r002,ci,,Finding 2.,Impression 2.\n" + rows(5, 3))
    out, log = tmp_path / "out", tmp_path / "log"
    log.mkdir()
    (log / "FAIL-r002").touch()
    stage = CountingLength(str(log), batch_size=8)
    run_pipeline(read_corpus(CorpusConfig(path=str(csv))), [stage],
                 RunSpec(job="t", output=str(out), writer_batch_size=4))
    (log / "FAIL-r002").unlink()
    retry = run_pipeline(read_corpus(CorpusConfig(path=str(csv))), [stage],
                         RunSpec(job="t", output=str(out), retry_failed=True))
    assert (retry.ok, retry.failed) == (1, 0)
    results = _schemas(out / "results")
    assert len(results) >= 3 and all(s == results[0] for s in results), results
    assert str(results[0].field("n_chars").type) == "int64"
    assert str(results[0].field("technique").type) == "string"
    errors = _schemas(out / "errors")
    assert all(s == errors[0] for s in errors)
    df = pd.read_parquet(out / "results")
    assert df["n_chars"].dtype == "int64" and len(df) == 8


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_errors_input_json_is_strict_json(ray_local, tmp_path):
    import ray

    df = pd.DataFrame({"report_id": ["a", "b"], "text": ["one", "two"],
                       "slope": [math.nan, 1.0], "intercept": [math.inf, -1024.0]})
    out = tmp_path / "out"
    run_pipeline(ray.data.from_pandas(df), [CountingLength(str(tmp_path / "log"),
                                                             fail_ids={"a", "b"})],
                 RunSpec(job="t", output=str(out)))
    err = pd.read_parquet(out / "errors").sort_values("report_id")
    replay = [_strict(s) for s in err["input_json"]]
    assert replay[0] == {"report_id": "a", "text": "one", "slope": None, "intercept": None}
    assert replay[1] == {"report_id": "b", "text": "two", "slope": 1.0, "intercept": -1024.0}


def test_ground_eval_binarizes_soft_masks_at_the_threshold_and_scores_empty_masks(tmp_path):
    import nibabel as nib

    from ctray.tasks.grounding.eval_job import GroundEvalConfig, run_ground_eval

    def save(name: str, data) -> str:
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4)), path)
        return str(path)

    gt = np.zeros((4, 4, 4))
    gt[0, :2, :] = 1  # 8 voxels
    soft = np.full((4, 4, 4), 0.3)  # a probability map: 0.3 is background
    soft[gt > 0] = 0.9
    empty = np.zeros((4, 4, 4))
    pd.DataFrame({"finding_id": ["soft", "both_empty", "pred_only"],
                  "mask_uri": [save("gt", gt), save("gt_empty", empty), save("gt_empty2", empty)],
                  "category": ["2d", "2d", "1e"]}).to_csv(tmp_path / "gt.csv", index=False)
    pd.DataFrame({"finding_id": ["soft", "both_empty", "pred_only"],
                  "mask_uri": [save("soft", soft), save("pred_empty", empty), save("pred", gt)]}
                 ).to_csv(tmp_path / "pred.csv", index=False)
    cfg = GroundEvalConfig.model_validate({
        "run": {"output": str(tmp_path / "eval")}, "predictions": str(tmp_path / "pred.csv"),
        "ground_truth": {"path": str(tmp_path / "gt.csv")}, "n_bootstrap": 20})
    run_ground_eval(cfg)
    scores = pd.read_csv(tmp_path / "eval" / "per_finding.csv").set_index("finding_id")
    # Every non-zero voxel as foreground would give 2*8 / (64 + 8) = 0.22 here.
    assert scores.loc["soft", "dice"] == 1.0 and scores.loc["soft", "pred_voxels"] == 8
    assert scores.loc["both_empty", "dice"] == 1.0
    assert scores.loc["pred_only", "dice"] == 0.0


def test_proxy_503_becomes_json_with_retry_after_and_json_errors_pass_through():
    import asyncio

    from ctray.serving.proxy import JSONErrorMiddleware

    def app_sending(status: int, ctype: bytes, body: bytes):
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", ctype)]})
            await send({"type": "http.response.body", "body": body})
        return app

    def call(app) -> tuple[int, dict, bytes]:
        sent = []

        async def send(message):
            sent.append(message)

        asyncio.run(JSONErrorMiddleware(app)({"type": "http"}, None, send))
        headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
        return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])

    # What Ray Serve's proxy sends for a full queue.
    status, headers, body = call(app_sending(503, b"text/plain; charset=utf-8",
                                             b"Request dropped due to backpressure"))
    assert status == 503 and headers["content-type"] == "application/json"
    assert headers["retry-after"] == "1" and int(headers["content-length"]) == len(body)
    assert json.loads(body) == {"detail": "Request dropped due to backpressure"}
    # An app's own JSON error and a normal answer are untouched (503s still get Retry-After).
    status, headers, body = call(app_sending(503, b"application/json",
                                             b'{"detail":"model check failed"}'))
    assert json.loads(body) == {"detail": "model check failed"} and headers["retry-after"] == "1"
    status, headers, body = call(app_sending(200, b"text/plain", b"ok"))
    assert (status, body) == (200, b"ok") and "retry-after" not in headers
    # The proxy's own plain-text 500 (the replica died mid-request): a retryable 503.
    status, headers, body = call(app_sending(500, b"text/plain; charset=utf-8",
                                             b"Internal Server Error"))
    assert status == 503 and headers["retry-after"] == "1"
    assert "retry" in json.loads(body)["detail"]
    # An app's JSON 500 stays a 500.
    status, headers, body = call(app_sending(500, b"application/json",
                                             b'{"detail":"internal error (ValueError)"}'))
    assert status == 500 and json.loads(body)["detail"] == "internal error (ValueError)"
    # The proxy raising before it answered (its replica's actor died): a retryable 503 too.
    async def raising(scope, receive, send):
        raise RuntimeError("ActorDiedError")

    async def silent(scope, receive, send):
        return None

    for app in (raising, silent):  # raised, or returned without answering
        status, headers, body = call(app)
        assert status == 503 and headers["retry-after"] == "1"
        assert "retry" in json.loads(body)["detail"]


def test_an_unhandled_exception_in_an_app_answers_json_without_the_message():
    from fastapi.testclient import TestClient

    from ctray.serving.service import service_api

    api = service_api("t", "t")

    @api.post("/boom")
    def boom():
        raise ValueError("Patient John Doe: 3 cm mass")  # report text must not leak

    reply = TestClient(api, raise_server_exceptions=False).post("/boom")
    assert reply.status_code == 500 and reply.headers["content-type"] == "application/json"
    assert reply.json() == {"detail": "internal error (ValueError)"}
