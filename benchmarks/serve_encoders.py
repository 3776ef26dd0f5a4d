"""bench-serve of the encoder apps next to the rule apps: one local Serve instance, the apps
of ``serve/encoders.yaml`` plus ``/rules`` and ``/cxr-rules``, each measured by ``ctray
bench-serve --url ... --route ...`` (one report per request) on its own sample reports.

    python benchmarks/serve_encoders.py --concurrency 1 8 --requests 32 \\
        [--cxr-checkpoint runs/train_cxr_encoder/model] [--findings-checkpoint runs/train_findings/model]

Without checkpoints the encoder apps serve untrained exports built over the packaged
all-MiniLM-L6-v2 (a CheXbert-style net with the train-cxr-encoder defaults; an 18-label
head with 512-token windows): the compute per report is a trained model's, the labels
are not. Prints one table per app and writes each bench-serve manifest under --output.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CXR_CORPUS = {"path": str(REPO / "ctray/data/sample_cxr_reports.csv"), "id_column": "uid",
              "sections": {"findings": "findings", "impression": "impression"},
              "text_sections": ["findings", "impression"]}
CT_CORPUS = {"path": str(REPO / "ctray/data/sample_reports_en.csv"),
             "sections": {"findings": "Findings_EN", "impressions": "Impressions_EN"}}


def untrained_cxr_encoder(out: Path) -> str:
    from transformers import AutoModel, AutoTokenizer

    from ctray.models import resolve_encoder_source
    from ctray.tasks.cxr.encoder_model import EncoderMeta, build_net, save_encoder_labeler

    source = resolve_encoder_source("all-minilm-l6-v2")
    encoder = AutoModel.from_pretrained(source, add_pooling_layer=False)
    meta = EncoderMeta(base_model="all-minilm-l6-v2", stage="untrained")
    save_encoder_labeler(out, build_net(encoder, meta), AutoTokenizer.from_pretrained(source), meta)
    return str(out)


def untrained_findings_encoder(out: Path) -> str:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ctray.models import resolve_encoder_source
    from ctray.tasks.findings.model import FindingsModelMeta, save_findings_model

    source = resolve_encoder_source("all-minilm-l6-v2")
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=18, problem_type="multi_label_classification")
    save_findings_model(out, model, AutoTokenizer.from_pretrained(source),
                        FindingsModelMeta(base_model="all-minilm-l6-v2"))
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cxr-checkpoint")
    parser.add_argument("--findings-checkpoint")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=32, help="requests per level")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--apps", nargs="+",
                        default=["cxr-encoder", "findings-encoder", "rules", "cxr-rules"])
    parser.add_argument("--output", default="runs/serve_encoders")
    args = parser.parse_args()

    import ray
    from ray import serve

    from ctray.tasks.findings.serve import FindingsAppArgs, RulesAppArgs, findings_app, rules_app
    from ctray.tasks.findings.bench_job import ServeBenchConfig, _free_port, run_serve_bench
    from ctray.tasks.cxr.serve import CxrRulesAppArgs, cxr_rules_app
    from ctray.tasks.cxr.serve import CxrEncoderAppArgs, cxr_encoder_app

    tmp = Path(tempfile.mkdtemp(prefix="serve-encoders-"))
    batching = dict(max_batch_size=args.max_batch_size, batch_wait_timeout_s=0.01)
    options = dict(num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
    builders = {
        "cxr-encoder": (lambda: cxr_encoder_app(CxrEncoderAppArgs(
            checkpoint=args.cxr_checkpoint or untrained_cxr_encoder(tmp / "cxr"), device="cpu",
            # The sample's 20 reports come round again and again: with the reading cache
            # every request after the first round would be a lookup, not a forward pass.
            cache_entries=0, **batching), **options), CXR_CORPUS),
        "findings-encoder": (lambda: findings_app(FindingsAppArgs(
            checkpoint=str(Path(args.findings_checkpoint).resolve()) if args.findings_checkpoint
            else untrained_findings_encoder(tmp / "findings"), device="cpu", **batching),
            **options), CT_CORPUS),
        "rules": (lambda: rules_app(RulesAppArgs(lang="en"), **options), CT_CORPUS),
        "cxr-rules": (lambda: cxr_rules_app(CxrRulesAppArgs(), **options), CXR_CORPUS),
    }
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 300})
    try:
        for name in args.apps:
            build, corpus = builders[name]
            started = time.perf_counter()
            serve.run(build(), name=name, route_prefix=f"/{name}")
            print(f"\n## {name} (deployed in {time.perf_counter() - started:.1f} s)", flush=True)
            run_serve_bench(ServeBenchConfig(
                url=f"http://127.0.0.1:{port}", route=f"/{name}", corpus={**corpus, "limit": 64},
                request_fields={"include_probabilities": False} if "findings" in name else {},
                concurrency=args.concurrency, requests_per_level=args.requests,
                warmup_requests=4, run={"output": f"{args.output}/{name}"}))
            serve.delete(name)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
