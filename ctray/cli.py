"""``ctray <job> --config configs/<job>.yaml [--set key=value ...]``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ctray.config import load_config
from ctray.errors import UserError
from ctray.jobs import JOBS, JobSpec, load_job_modules

COMMON_FLAGS = {
    "--output": ("run.output", str, "output folder or s3:// / gs:// URI"),
    "--limit": ("corpus.limit", int, "process only the first N rows"),
    "--backend": ("backend.kind", str, "LLM backend: fake, hf, openai, vllm"),
    "--model": ("backend.model", str, "model id, local path or GGUF file"),
    "--ray-address": ("run.ray_address", str, "Ray cluster address ('auto' inside a cluster)"),
}


def init_ray(run_cfg) -> None:
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": False}
    if run_cfg.ray_address:
        kwargs["address"] = run_cfg.ray_address
    elif run_cfg.num_cpus:
        kwargs["num_cpus"] = run_cfg.num_cpus
    ray.init(**kwargs)


def build_parser() -> argparse.ArgumentParser:
    load_job_modules()
    parser = argparse.ArgumentParser(prog="ctray", description=__doc__)
    sub = parser.add_subparsers(dest="job", metavar="JOB")
    for spec in sorted(JOBS.values(), key=lambda s: s.name):
        p = sub.add_parser(spec.name, help=spec.help, description=spec.help)
        add_job_arguments(p, spec)
    return parser


def add_job_arguments(p: argparse.ArgumentParser, spec: JobSpec) -> None:
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set backend.batch_size=8")
    fields = spec.config_class.model_fields
    for flag, (path, typ, text) in COMMON_FLAGS.items():
        if path.split(".")[0] in fields:
            p.add_argument(flag, type=typ, help=f"{text} (= {path})")
    if "run" in fields:
        p.add_argument("--retry-failed", action="store_true",
                       help="reprocess only the rows in the errors table (= run.retry_failed)")
        p.add_argument("--no-resume", action="store_true",
                       help="do not skip rows finished by an earlier run (= run.resume=false)")
    for flag, path in spec.flags.items():
        p.add_argument(flag, help=f"= {path}")


def overrides_from_args(args: argparse.Namespace, spec: JobSpec) -> list[str]:
    out = list(args.set)
    for flag, (path, _, _) in COMMON_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            out.append(f"{path}={value}")
    if getattr(args, "retry_failed", False):
        out.append("run.retry_failed=true")
    if getattr(args, "no_resume", False):
        out.append("run.resume=false")
    for flag, path in spec.flags.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            out.append(f"{path}={json.dumps(value)}")
    return out


def run_job(name: str, argv: list[str]) -> Any:
    load_job_modules()
    if name not in JOBS:
        raise SystemExit(f"unknown job {name!r}; available: {', '.join(sorted(JOBS))}")
    spec = JOBS[name]
    parser = argparse.ArgumentParser(prog=f"ctray {name}", description=spec.help)
    add_job_arguments(parser, spec)
    args = parser.parse_args(argv)
    cfg = load_config(spec.config_class, args.config, overrides_from_args(args, spec))
    logging.basicConfig(level=getattr(cfg, "run", None) and cfg.run.log_level or "INFO",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if spec.needs_ray and hasattr(cfg, "run"):
        init_ray(cfg.run)
    return spec.run_function(cfg)


def job_entrypoint(name: str, argv: list[str] | None = None) -> int:
    """What ``jobs/<name>.py`` calls: the same job as ``ctray <name>``."""
    return main([name, *(sys.argv[1:] if argv is None else argv)])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0
    try:
        run_job(argv[0], argv[1:])
    except UserError as exc:
        print(f"ctray: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
