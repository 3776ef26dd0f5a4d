"""``ctray <job> --config configs/<job>.yaml [--set key=value ...]``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ctray.config import describe_fields, load_config
from ctray.errors import UserError
from ctray.jobs import ALIASES, JOBS, JobSpec, load_job_modules, resolve
from ctray.pipeline.ray_session import (check_submitted_output, init_ray,
                                        keep_cpu_work_off_gpu_nodes)

COMMON_FLAGS = {
    "--output": ("run.output", str, "output folder or s3:// / gs:// URI"),
    "--limit": ("corpus.limit", int, "process only the first N rows"),
    "--backend": ("backend.kind", str, "LLM backend: vllm (the configs' default; CPU or GPU engine), hf (transformers, without vLLM), openai, fake; the manifest's models entry names the engine"),
    "--model": ("backend.model", str, "model id, local path or GGUF file"),
    "--ray-address": ("run.ray_address", str, "Ray cluster address ('auto' inside a cluster)"),
}


def build_parser() -> argparse.ArgumentParser:
    load_job_modules()
    parser = argparse.ArgumentParser(prog="ctray", description=__doc__,
                                     epilog="`ctray JOB --help` lists the job's flags and "
                                            "every config field with its default.")
    sub = parser.add_subparsers(dest="job", metavar="JOB")
    for spec in sorted(JOBS.values(), key=lambda s: s.name):
        sub.add_parser(spec.name, help=spec.help, description=spec.help)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag like every other input error: one ``ctray:``
    line and exit code 2 (not a usage block)."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def job_parser(spec: JobSpec) -> argparse.ArgumentParser:
    """``ctray <job>``'s parser; its --help ends with the config fields (self-documented)."""
    parser = _Parser(prog=f"ctray {spec.name}", description=spec.help,
                                     epilog=config_help(spec.config_class),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_arguments(parser, spec)
    return parser


def config_help(cls) -> str:
    """Every config field (dotted path for ``--set`` and YAML), its type, default, meaning."""
    lines = ["config fields (YAML keys, or --set path=value):"]
    for path, type_name, default, doc in describe_fields(cls):
        head = f"  {path} ({type_name}{', default ' + default if default else ''})"
        lines.append(head + (f"\n      {doc}" if doc else ""))
    return "\n".join(lines)


def add_job_arguments(p: argparse.ArgumentParser, spec: JobSpec) -> None:
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set backend.batch_size=8")
    for flag, (path, typ, text) in offered_common_flags(spec).items():
        p.add_argument(flag, type=typ, help=f"{text} (= {path})")
    if spec.row_resumable:
        p.add_argument("--retry-failed", action="store_true",
                       help="reprocess only the rows in the errors table (= run.retry_failed)")
        p.add_argument("--no-resume", action="store_true",
                       help="do not skip rows finished by an earlier run (= run.resume=false)")
    for flag, path in spec.flags.items():
        if _field_type(spec.config_class, path) is bool:
            # `--allow-partial` alone means true; `--strict true|false` still works.
            p.add_argument(flag, nargs="?", const="true", help=f"= {path} (true when given alone)")
        else:
            p.add_argument(flag, help=f"= {path}")


def _field_type(cls, path: str):
    """The annotation of a dotted config field (None when it is not a plain field)."""
    from pydantic import BaseModel

    for part in path.split("."):
        info = getattr(cls, "model_fields", {}).get(part)
        if info is None:
            return None
        cls = info.annotation
    return cls if not (isinstance(cls, type) and issubclass(cls, BaseModel)) else None


def offered_common_flags(spec: JobSpec) -> dict[str, tuple[str, type, str]]:
    """The common flags this job honours: its config has the section, and --ray-address
    only for jobs that start Ray (a flag a job would ignore is not offered)."""
    fields = spec.config_class.model_fields
    return {flag: v for flag, v in COMMON_FLAGS.items()
            if v[0].split(".")[0] in fields and flag not in spec.flags
            and (spec.needs_ray or flag != "--ray-address")}


def overrides_from_args(args: argparse.Namespace, spec: JobSpec) -> list[str]:
    out = list(args.set)
    for flag, (path, _, _) in offered_common_flags(spec).items():
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
    """Parse the job's flags, load its config, start Ray if it needs it, run it."""
    spec = resolve(name)
    if spec is None:
        raise UserError(f"unknown job {name!r}; available: {', '.join(sorted(JOBS))}")
    args = job_parser(spec).parse_args(argv)
    # The whole config is validated (types, ranges, enums) before Ray starts.
    cfg = load_config(spec.config_class, args.config, overrides_from_args(args, spec))
    if cfg.job in ALIASES:  # a config file written under the job's former name
        cfg = cfg.model_copy(update={"job": ALIASES[cfg.job]})
    logging.basicConfig(level=getattr(cfg, "run", None) and cfg.run.log_level or "INFO",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if hasattr(cfg, "run"):
        check_submitted_output(cfg.run.output)
    if not (spec.needs_ray and hasattr(cfg, "run")) or ray_is_running():
        keep_cpu_work_off_gpu_nodes()
        return spec.run_function(cfg)
    try:
        init_ray(cfg.run)
    except (ConnectionError, TimeoutError) as exc:
        raise UserError(f"cannot join Ray at {cfg.run.ray_address!r} ({exc})") from None
    try:
        keep_cpu_work_off_gpu_nodes()
        return spec.run_function(cfg)
    finally:
        end_ray_session()


def ray_is_running() -> bool:
    import ray

    return ray.is_initialized()


def end_ray_session() -> None:
    """Close the engines this driver started, then leave Ray, before the interpreter
    exits: engines torn down by the exit itself printed tracebacks (EngineDeadError,
    resource_tracker) after successful runs."""
    import ray

    from ctray.llm.vllm_shared import stop_shared_engines

    try:
        stop_shared_engines()
    finally:
        ray.shutdown()


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
