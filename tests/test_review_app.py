"""The labeling and review page (serve/review.yaml): the API under Ray Serve, and the
page itself in headless Chromium.

One Serve instance (127.0.0.1, free port, bearer token on every app) runs the review
app beside the CXR rules, the CT-RATE rules, a second CXR labeler (the CXR LLM app on a
fake backend that turns every "uncertain" into "positive", so the two disagree in known
places). The last test removes the second labeler ("labeler down").
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import math
import os
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from review_fixtures import (EXPECTED_DIFF, REPORTS, report_text, reports_csv,
                             second_opinion)
from serve_fixtures import deploy, fit_for_tests, free_port, serve_apps

REPO = Path(__file__).resolve().parents[1]
TOKEN = "review-token-93b1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EN_REPORT = "Small right pleural effusion. No pneumothorax. Heart size is normal."
JA_REPORT = "両側に胸水を認める。肺結節は認めない。"






@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    from ray import serve

    work = tmp_path_factory.mktemp("review-work")
    apps = {a["name"]: a for a in serve_apps("review")}
    review = fit_for_tests(apps["review"], CTRAY_SERVE_TOKEN=TOKEN)
    review["args"].update(work_dir=str(work), max_paste_chars=2000, max_upload_bytes=50_000,
                          max_upload_rows=50, chunk=4)
    second = fit_for_tests({a["name"]: a for a in serve_apps("cxr")}["cxr-llm"],
                           CTRAY_SERVE_TOKEN=TOKEN)
    second.update(name="cxr-second", route_prefix="/cxr-second")
    second["args"] = {"answer_format": "sft", "max_tokens": 200, "backend": {
        "kind": "fake", "model": "second-opinion",
        "fake_responder": "review_fixtures:cxr_second_opinion"}}
    second["deployments"][0]["user_config"].update(max_batch_size=4, batch_wait_timeout_s=0.05)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    deploy({"applications": [review, fit_for_tests(apps["cxr-rules"], CTRAY_SERVE_TOKEN=TOKEN),
                              fit_for_tests(apps["rules"], CTRAY_SERVE_TOKEN=TOKEN), second]},
           timeout=600)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=AUTH) as client:
        yield {"client": client, "url": f"http://127.0.0.1:{port}", "work": work}
    serve.shutdown()


def _wait_job(client: httpx.Client, job: str, timeout: float = 90) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = client.get(f"/review/api/jobs/{job}").json()
        if info["status"] in ("finished", "failed"):
            return info
        time.sleep(0.3)
    raise TimeoutError(info)


def _rules(text: str) -> dict[str, float | None]:
    from ctray.tasks.cxr.rules import CxrRuleLabeler

    return {o: (None if math.isnan(v) else v) for o, v in CxrRuleLabeler().label(text).labels.items()}


# ----------------------------------------------------------------------------- API

def test_paste_labels_with_evidence_spans(served):
    client = served["client"]
    labelers = client.get("/review/api/labelers").json()["labelers"]
    by_name = {l["name"]: l for l in labelers}
    assert by_name["cxr-rules"]["task"] == "cxr" and by_name["cxr-rules"]["evidence"]
    assert by_name["rules"]["task"] == "ctrate" and by_name["cxr-second"]["task"] == "cxr"
    assert "review" not in by_name
    r = client.post("/review/api/label", json={"task": "cxr", "labeler": "cxr-rules",
                                               "text": EN_REPORT})
    assert r.status_code == 200, r.text
    out = r.json()
    values = {row["key"]: row["value"] for row in out["rows"]}
    assert values == _rules(EN_REPORT)
    marked = {EN_REPORT[s["start"]:s["end"]]: s["keys"] for s in out["spans"]}
    assert marked["Small right pleural effusion."] == ["Pleural Effusion"]
    assert marked["No pneumothorax."] == ["Pneumothorax"]
    ja = client.post("/review/api/label", json={"task": "ctrate", "labeler": "rules",
                                                "text": JA_REPORT}).json()
    positive = [row["key"] for row in ja["rows"] if row["value"] == 1]
    assert positive == ["pleural_effusion"]
    assert [JA_REPORT[s["start"]:s["end"]] for s in ja["spans"]] == ["両側に胸水を認める。"]
    llm = client.post("/review/api/label", json={"task": "cxr", "labeler": "cxr-second",
                                                 "text": report_text("r3")}).json()
    assert llm["spans"] == [] and {r["key"]: r["value"] for r in llm["rows"]} == \
        second_opinion(_rules(report_text("r3")))


def test_upload_job_review_queue_gold_and_kappa(served):
    from ctray.tasks.cxr.eval_job import LabelsInput, read_labels

    client = served["client"]
    r = client.post("/review/api/jobs", params={"task": "cxr", "labelers": "cxr-rules,cxr-second",
                                                "filename": "reports.csv"},
                    content=reports_csv().encode())
    assert r.status_code == 200, r.text
    job = r.json()["job"]
    info = _wait_job(client, job)
    assert info["status"] == "finished", info
    assert info["done"] == info["total"] == 12 and info["failed"] == 1
    assert info["per_labeler"]["cxr-second"] == {"done": 6, "failed": 1}
    assert info["labelers"] == ["cxr-rules", "cxr-second"]
    csv = client.get(f"/review/api/jobs/{job}/labels/cxr-rules")
    assert csv.status_code == 200 and "attachment" in csv.headers["content-disposition"]
    path = served["work"] / "dl.csv"
    path.write_bytes(csv.content)
    table = read_labels(LabelsInput(path=str(path)), "labels")  # the CheXpert layout
    assert list(table.index) == list(REPORTS)
    got = {o: (None if math.isnan(v) else v) for o, v in table.loc["r5"].items()}
    assert got == _rules(report_text("r5"))
    errors = pd.read_csv(io.BytesIO(client.get(f"/review/api/jobs/{job}/labels/cxr-second",
                                               params={"kind": "errors"}).content))
    assert list(errors["report_id"]) == ["r6"] and errors["error"][0].startswith("parse_error")
    manifest = json.loads((served["work"] / "jobs" / job / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["reports"] == 6

    q = client.post("/review/api/reviews", json={"job": job, "a": "cxr-rules", "b": "cxr-second"})
    assert q.status_code == 200, q.text
    assert q.json()["disagreements"] == 3 and q.json()["compared"] == 5
    queue = q.json()["queue"]
    items = client.get(f"/review/api/reviews/{queue}").json()["items"]
    assert [(i["report_id"], i["n_diff"]) for i in items] == list(EXPECTED_DIFF.items())
    item = client.get(f"/review/api/reviews/{queue}/items/r3").json()
    assert item["labels_b"]["Cardiomegaly"] == 1.0 and item["labels_a"]["Cardiomegaly"] == -1.0
    assert any(item["text"][s["start"]:s["end"]] == "Borderline cardiomegaly."
               for s in item["spans_a"])

    def review(name: str, pick: str) -> None:
        for rid in EXPECTED_DIFF:
            it = client.get(f"/review/api/reviews/{queue}/items/{rid}").json()
            values = it[f"labels_{pick}"]
            r = client.put(f"/review/api/reviews/{queue}/items/{rid}",
                           json={"reviewer": name, "values": values})
            assert r.status_code == 200, r.text

    with cf.ThreadPoolExecutor(2) as pool:
        list(pool.map(review, ["alice", "bob"], ["a", "b"]))
    review("carol", "a")
    gold_csv = client.get(f"/review/api/reviews/{queue}/gold.csv")
    assert gold_csv.status_code == 200
    (served["work"] / "gold.csv").write_bytes(gold_csv.content)
    gold = read_labels(LabelsInput(path=str(served["work"] / "gold.csv")), "gold")
    for rid in EXPECTED_DIFF:  # two of three reviewers kept the rules' values
        assert {o: (None if math.isnan(v) else v) for o, v in gold.loc[rid].items()} == \
            _rules(report_text(rid))
    kappa = client.get(f"/review/api/reviews/{queue}/kappa").json()
    assert kappa["reports_with_several_reviewers"] == 3
    assert kappa["reviewers"] == ["alice", "bob", "carol"]
    opacity = next(o for o in kappa["observations"] if o["observation"] == "Lung Opacity")
    # alice = carol (rules: -1, -1, 1), bob (second: 1, 1, 1): agreement 5 of 9 pairs.
    assert opacity["agreement"] == pytest.approx(5 / 9) and opacity["pairs"] == 3


def test_bad_input_answers_4xx_json_and_writes_nothing(served):
    client = served["client"]
    jobs_before = set((served["work"] / "jobs").iterdir())
    assert httpx.get(served["url"] + "/review/api/labelers").status_code == 401
    cases = [
        (client.post("/review/api/label", json={"task": "cxr", "labeler": "cxr-rules",
                                                "text": "x" * 2001}), 413, "limit is 2000"),
        (client.post("/review/api/label", json={"task": "cxr", "labeler": "cxr-rules",
                                                "text": "  "}), 422, "text is empty"),
        (client.post("/review/api/label", json={"task": "ctrate", "labeler": "cxr-rules",
                                                "text": "x"}), 422, "labels cxr"),
        (client.post("/review/api/jobs", params={"task": "cxr", "labelers": "cxr-rules"},
                     content=b"uid,text\n" + b"r,x\n" * 20_000), 413, "limit is 50000"),
        (client.post("/review/api/jobs", params={"task": "cxr", "labelers": "cxr-rules"},
                     content=b"name,body\nr1,x\n"), 422, "no id column"),
        (client.post("/review/api/jobs", params={"task": "cxr", "labelers": "cxr-rules"},
                     content="uid,text\nr1,caf\xe9\n".encode("latin-1")), 400, "not UTF-8"),
        (client.post("/review/api/jobs", params={"task": "cxr", "labelers": "nobody"},
                     content=b"uid,text\nr1,x\n"), 404, "no labeler named"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, response.text
        assert words in response.json()["detail"]
    assert set((served["work"] / "jobs").iterdir()) == jobs_before  # no job folder

    # Invalid reviewer values: 422 naming the observation, no row written.
    job = client.post("/review/api/jobs", params={"task": "cxr", "labelers": "cxr-rules",
                                                  "filename": "r.csv"},
                      content=reports_csv().encode()).json()["job"]
    assert _wait_job(client, job)["status"] == "finished"
    header = ",".join(["report_id", *_rules("x")])
    bad_gold = client.post(f"/review/api/jobs/{job}/gold", params={"filename": "g.csv"},
                           content=f"{header}\nr3,{',' * 2}7{',' * 11}\n".encode())
    assert bad_gold.status_code == 422 and "row 2" in bad_gold.json()["detail"]
    gold_rows = [",".join(["r2", *["1"] * 14]), ",".join(["r3", *["0"] * 14])]
    ok = client.post(f"/review/api/jobs/{job}/gold", params={"filename": "g.csv"},
                     content="\n".join([header, *gold_rows]).encode())
    assert ok.status_code == 200 and ok.json()["matched"] == 2
    queue = client.post("/review/api/reviews", json={"job": job, "a": "cxr-rules",
                                                     "b": "gold"}).json()["queue"]
    url = f"/review/api/reviews/{queue}/items/r3"
    for values, words in [({"Edema": 2, "Cardiomegaly": 1}, "Edema"),
                          ({"Cardiomegaly": "yes"}, "Cardiomegaly"),
                          ({"Heart": 1}, "not a cxr observation")]:
        r = client.put(url, json={"reviewer": "alice", "values": values})
        assert r.status_code == 422 and words in r.json()["detail"]
    r = client.put(url, json={"reviewer": "", "values": {"Edema": 1}})
    assert r.status_code == 422
    assert client.get(f"/review/api/reviews/{queue}/gold.csv").status_code == 409  # nothing


def test_offline_docs_pages(served):
    for app in ("review", "cxr-rules", "cxr-second"):
        html = httpx.get(f"{served['url']}/{app}/docs").text
        assert f"/{app}/docs-assets/swagger-ui-bundle.js" in html and "cdn" not in html.lower()
    js = httpx.get(f"{served['url']}/cxr-rules/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 500_000
    page = httpx.get(f"{served['url']}/review", follow_redirects=True)
    assert page.status_code == 200 and '<base href="/review/">' in page.text
    assert "http" not in page.text.replace('href="docs"', "")


# ----------------------------------------------------------------------------- browser

def _browser_available() -> str | None:
    for exe in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not os.path.exists(exe):
            return f"{exe} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def _chrome(profile: Path, downloads: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1400,1000", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"),
                              options=opts)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(downloads)})
    return driver


def _wait(driver, predicate, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: predicate(d))


def _settled(driver, timeout: float = 30) -> None:
    """Wait until the page has no request in flight (it counts them in <body data-pending>),
    so no re-render is still coming that would replace the elements the test holds."""
    from selenium.webdriver.common.by import By

    _wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute(
        "data-pending") == "0", timeout)


def _downloaded(folder: Path, prefix: str, timeout: float = 20) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = [p for p in folder.glob(f"{prefix}*.csv")]
        if done:
            return done[0]
        time.sleep(0.1)
    raise TimeoutError(f"no {prefix}*.csv in {folder}: {list(folder.iterdir())}")


def _open(driver, url: str, reviewer: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(url + "/review/")
    # Without the token the page says so (401), then loads the labelers once it is typed.
    _wait(driver, lambda d: "bearer token" in d.find_element(By.ID, "message").text)
    driver.find_element(By.ID, "token").send_keys(TOKEN, Keys.TAB)
    driver.find_element(By.ID, "reviewer").send_keys(reviewer, Keys.TAB)
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#labeler option")) > 0)
    _settled(driver)  # the review queues load after the labelers


def _value(driver, key: str) -> str:
    from selenium.webdriver.common.by import By

    row = driver.find_element(By.CSS_SELECTOR, f'#labels-table tr[data-key="{key}"]')
    return row.find_elements(By.TAG_NAME, "td")[1].get_attribute("data-value")


def _review_items(driver, name: str, pick: str) -> dict[str, str]:
    """Open each disagreement, set every observation to labeler ``pick``'s value, save."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    saved = {}
    for rid in list(EXPECTED_DIFF)[:2]:
        driver.find_element(By.CSS_SELECTOR, f'#queue-items tr[data-id="{rid}"]').click()
        _wait(driver, lambda d: d.find_element(By.ID, "item-id").text == rid)
        _settled(driver)
        for row in driver.find_elements(By.CSS_SELECTOR, "#item-table tbody tr"):
            cells = row.find_elements(By.TAG_NAME, "td")
            chosen = cells[1 if pick == "a" else 2].text.split(" ")[0]
            Select(row.find_element(By.TAG_NAME, "select")).select_by_value(
                "" if chosen == "blank" else chosen)
        before = driver.find_element(By.ID, "saved-msg").get_attribute("data-saved-at")
        driver.find_element(By.ID, "save-btn").click()
        _wait(driver, lambda d: d.find_element(By.ID, "saved-msg").get_attribute(
            "data-saved-at") not in (None, before))
        saved[rid] = driver.find_element(By.ID, "saved-msg").get_attribute("data-saved-at")
    return saved


def test_browser_walkthrough(served, tmp_path):
    """Paste EN and JA reports, upload a CSV and download the labels, two reviewers review
    two disagreements at the same time, export the gold file and read the kappa."""
    reason = _browser_available()
    if reason:
        pytest.skip(reason)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from ctray.tasks.cxr.eval_job import LabelsInput, read_labels

    url = served["url"]
    # The screenshots refresh docs/img only when asked; a plain test run must not rewrite
    # tracked files.
    img = (REPO / "docs" / "img" if os.environ.get("CTRAY_UPDATE_SCREENSHOTS") == "1"
           else tmp_path / "screenshots")
    img.mkdir(parents=True, exist_ok=True)
    alice = _chrome(tmp_path / "alice", tmp_path / "dl_alice")
    bob = None
    try:
        _open(alice, url, "alice")
        # 1. paste an English report: labels and highlighted evidence
        Select(alice.find_element(By.ID, "task")).select_by_value("cxr")
        Select(alice.find_element(By.ID, "labeler")).select_by_value("cxr-rules")
        alice.find_element(By.ID, "report").send_keys(EN_REPORT)
        alice.find_element(By.ID, "label-btn").click()
        _wait(alice, lambda d: d.find_elements(By.CSS_SELECTOR, "#labels-table tbody tr"))
        assert _value(alice, "Pleural Effusion") == "1" and _value(alice, "Pneumothorax") == "0"
        marks = {m.text for m in alice.find_elements(By.CSS_SELECTOR, "#report-view mark")}
        from ctray.tasks.cxr.rules import CxrRuleLabeler

        evidence = CxrRuleLabeler().label(EN_REPORT).evidence
        assert marks == {s for s in evidence.values() if s}
        assert {"Small right pleural effusion.", "No pneumothorax.", "Heart size is normal."} <= marks
        alice.save_screenshot(str(img / "review_1_paste.png"))
        # a Japanese CT report with the CT-RATE rules
        Select(alice.find_element(By.ID, "task")).select_by_value("ctrate")
        Select(alice.find_element(By.ID, "labeler")).select_by_value("rules")
        alice.execute_script("document.getElementById('report').value = arguments[0]", JA_REPORT)
        alice.find_element(By.ID, "label-btn").click()
        _wait(alice, lambda d: d.find_elements(By.CSS_SELECTOR,
                                               '#labels-table tr[data-key="pleural_effusion"]'))
        assert _value(alice, "pleural_effusion") == "1" and _value(alice, "lung_nodule") == "0"
        assert [m.text for m in alice.find_elements(By.CSS_SELECTOR, "#report-view mark")] == \
            ["両側に胸水を認める。"]
        alice.save_screenshot(str(img / "review_2_paste_ja.png"))
        # bad input gets a message on the page
        alice.execute_script("document.getElementById('report').value = 'x'.repeat(2500)")
        alice.find_element(By.ID, "label-btn").click()
        _wait(alice, lambda d: "limit is 2000" in d.find_element(By.ID, "message").text)

        # 2. upload a CSV, label it with two labelers, download the labels
        alice.find_element(By.ID, "tab-file").click()
        Select(alice.find_element(By.ID, "file-task")).select_by_value("cxr")
        alice.find_element(By.ID, "lab-cxr-rules").click()
        alice.find_element(By.ID, "lab-cxr-second").click()
        upload = tmp_path / "reports.csv"
        upload.write_text(reports_csv(), encoding="utf-8")
        alice.find_element(By.ID, "file-input").send_keys(str(upload))
        alice.find_element(By.ID, "upload-btn").click()
        _wait(alice, lambda d: d.find_element(By.ID, "job-status").get_attribute(
            "data-status") == "finished", timeout=90)
        assert "12/12 labeled, 1 failed" in alice.find_element(By.ID, "job-status").text
        alice.save_screenshot(str(img / "review_3_upload.png"))
        alice.find_element(By.ID, "download-cxr-rules").click()
        labels = read_labels(LabelsInput(path=str(_downloaded(tmp_path / "dl_alice",
                                                              "labels_cxr-rules"))), "labels")
        assert list(labels.index) == list(REPORTS)

        # 3. a review queue of the two labelers' disagreements
        Select(alice.find_element(By.ID, "review-a")).select_by_value("cxr-rules")
        Select(alice.find_element(By.ID, "review-b")).select_by_value("cxr-second")
        alice.find_element(By.ID, "make-review-btn").click()
        _wait(alice, lambda d: d.find_element(By.ID, "message").text.startswith("review queue"))
        queue = alice.find_element(By.ID, "message").text.split()[2].rstrip(":")
        _wait(alice, lambda d: d.find_element(By.ID, "queue-items").get_attribute(
            "data-queue") == queue)
        order = [r.get_attribute("data-id")
                 for r in alice.find_elements(By.CSS_SELECTOR, "#queue-items tbody tr")]
        assert order == list(EXPECTED_DIFF)
        alice.find_element(By.CSS_SELECTOR, '#queue-items tr[data-id="r3"]').click()
        _wait(alice, lambda d: d.find_element(By.ID, "item-id").text == "r3")
        _settled(alice)
        alice.save_screenshot(str(img / "review_4_item.png"))

        # 4. two reviewers at once: alice keeps the rules' values, bob the second labeler's
        bob = _chrome(tmp_path / "bob", tmp_path / "dl_bob")
        _open(bob, url, "bob")
        bob.find_element(By.ID, "tab-review").click()
        Select(bob.find_element(By.ID, "queue")).select_by_value(queue)
        _wait(bob, lambda d: d.find_element(By.ID, "queue-items").get_attribute(
            "data-queue") == queue)
        _settled(bob)
        with cf.ThreadPoolExecutor(2) as pool:
            a_done = pool.submit(_review_items, alice, "alice", "a")
            b_done = pool.submit(_review_items, bob, "bob", "b")
            saved = {"alice": a_done.result(), "bob": b_done.result()}

        # 5. export the gold file (eval-cxr reads it) and the agreement table
        alice.find_element(By.ID, "refresh-btn").click()
        _settled(alice)
        alice.find_element(By.ID, "export-btn").click()
        gold = read_labels(LabelsInput(path=str(_downloaded(tmp_path / "dl_alice", "gold_"))),
                           "gold")
        assert sorted(gold.index) == sorted(list(EXPECTED_DIFF)[:2])
        for rid in gold.index:  # a tie between two reviewers goes to the later save
            later = "alice" if saved["alice"][rid] > saved["bob"][rid] else "bob"
            want = _rules(report_text(rid))
            want = want if later == "alice" else second_opinion(want)
            assert {o: (None if math.isnan(v) else v) for o, v in gold.loc[rid].items()} == want
        alice.find_element(By.ID, "kappa-btn").click()
        _wait(alice, lambda d: d.find_elements(By.CSS_SELECTOR, "#kappa-table tbody tr"))
        rows = {r.get_attribute("data-observation"): [c.text for c in r.find_elements(
            By.TAG_NAME, "td")] for r in alice.find_elements(By.CSS_SELECTOR,
                                                             "#kappa-table tbody tr")}
        # Lung Opacity: alice -1, -1 and bob 1, 1 on r3, r2: no agreement, kappa 0.
        assert rows["Lung Opacity"][1:] == ["2", "0.00", "0.000"]
        # Pleural Effusion: both 0 on r3 and blank on r2: full agreement, kappa 1.
        assert rows["Pleural Effusion"][1:] == ["2", "1.00", "1.000"]
        alice.execute_script("document.getElementById('kappa').scrollIntoView()")
        alice.save_screenshot(str(img / "review_5_kappa.png"))

        # 6. /docs works offline
        alice.get(url + "/review/docs")
        _wait(alice, lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"))
        alice.save_screenshot(str(img / "review_6_docs.png"))
    finally:
        alice.quit()
        if bob is not None:
            bob.quit()


def test_labeler_down_is_a_clear_error(served):
    """Runs last: removes the second labeler's app, as if it went down."""
    from ray import serve

    client = served["client"]
    serve.delete("cxr-second")
    r = client.post("/review/api/label", json={"task": "cxr", "labeler": "cxr-second",
                                               "text": EN_REPORT})
    assert r.status_code in (404, 503) and "cxr-second" in r.json()["detail"]
    r = client.post("/review/api/jobs", params={"task": "cxr", "labelers": "cxr-rules,cxr-second"},
                    content=reports_csv().encode())
    assert r.status_code in (404, 503) and "cxr-second" in r.json()["detail"]
