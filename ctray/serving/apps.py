"""Typed Serve application builders: the ``import_path`` targets of ``serve/*.yaml``.

``serve run serve/findings.yaml`` (or ``serve deploy``) calls e.g.
``build_findings_app(args)`` with the YAML's ``args`` validated into the pydantic
model. Fields of the args that are also ``user_config`` fields (checkpoint,
batching, limits) become the deployment's initial ``user_config``; a
``deployments[].user_config`` in the YAML replaces it as a whole, and changing it
later is applied by ``reconfigure`` without restarting replicas. The other fields
(language, LLM backend, prompt) are constructor arguments: changing them
restarts the replicas.

From Python, ``findings_app(args, **deployment_options)`` accepts Serve
deployment options as well (``num_replicas``, ``ray_actor_options``, ...).
"""

# No ``from __future__ import annotations`` here: Serve reads the builders'
# parameter annotations as classes to validate ``args``.

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from ctray.llm.config import BackendConfig
from ctray.serving.deployments import FindingsLabeler, FindingsUserConfig, RuleLabelerService
from ctray.serving.llm_deployments import (LeavsReportService, LLMFindingsLabeler, LLMUserConfig,
                                          TranslatorService)
from ctray.serving.service import Limits
from ctray.tasks.translate.prompts import TranslationPromptConfig


def _coerce(model: type[BaseModel], args: Any) -> Any:
    # `serve run module:builder key=value` passes a dict when Serve cannot see the
    # annotation; validate it the same way.
    return args if isinstance(args, model) else model.model_validate(args or {})


def _user_config(args: BaseModel, cls: type[BaseModel]) -> dict[str, Any]:
    return args.model_dump(include=set(cls.model_fields))


class FindingsAppArgs(FindingsUserConfig):
    """All fields are the deployment's initial ``user_config`` (hot-swappable)."""


def findings_app(args: FindingsAppArgs, **options: Any) -> Application:
    args = _coerce(FindingsAppArgs, args)
    return FindingsLabeler.options(user_config=_user_config(args, FindingsUserConfig),
                                   **options).bind()


def build_findings_app(args: FindingsAppArgs) -> Application:
    return findings_app(args)


class RulesAppArgs(Limits):
    lang: str = Field(default="auto", description="'en', 'ja' or 'auto' (per report)")


def rules_app(args: RulesAppArgs, **options: Any) -> Application:
    args = _coerce(RulesAppArgs, args)
    return RuleLabelerService.options(user_config=_user_config(args, Limits),
                                      **options).bind(args.lang)


def build_rules_app(args: RulesAppArgs) -> Application:
    return rules_app(args)


class LLMAppArgs(LLMUserConfig):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    backend: BackendConfig = Field(
        default_factory=BackendConfig, description="the LLM backend the replicas hold (kind, "
        "model, sampling)")


class TranslateAppArgs(LLMAppArgs):
    prompt: TranslationPromptConfig = Field(default_factory=TranslationPromptConfig)
    max_tokens: int = Field(default=1024, ge=1)
    repair: bool = Field(default=True, description="ask once more after an unreadable answer")


def translate_app(args: TranslateAppArgs, **options: Any) -> Application:
    args = _coerce(TranslateAppArgs, args)
    return TranslatorService.options(user_config=_user_config(args, LLMUserConfig),
                                     **options).bind(args.prompt, args.backend,
                                                     args.max_tokens, args.repair)


def build_translate_app(args: TranslateAppArgs) -> Application:
    return translate_app(args)


class LLMFindingsAppArgs(LLMAppArgs):
    lang: str = Field(default="auto", description="prompt language: en, ja or auto (per report)")
    max_tokens: int = Field(default=400, ge=1)
    guided_json: bool = Field(default=True, description="send the JSON schema to the backend")
    repair: bool = True
    lenient: bool = False

    def task_options(self) -> dict[str, Any]:
        return self.model_dump(include={"lang", "max_tokens", "guided_json", "repair", "lenient"})


def llm_findings_app(args: LLMFindingsAppArgs, **options: Any) -> Application:
    args = _coerce(LLMFindingsAppArgs, args)
    return LLMFindingsLabeler.options(user_config=_user_config(args, LLMUserConfig),
                                      **options).bind(args.backend, args.task_options())


def build_llm_findings_app(args: LLMFindingsAppArgs) -> Application:
    return llm_findings_app(args)


class LeavsAppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] = Field(
        default_factory=dict, description="fields of the leavs job config (organs, fast, no_cot, "
        "cot_max_tokens, repair, backend); the rest keep the job's defaults")


def leavs_app(args: LeavsAppArgs, **options: Any) -> Application:
    args = _coerce(LeavsAppArgs, args)
    return LeavsReportService.options(**options).bind(args.config)


def build_leavs_app(args: LeavsAppArgs) -> Application:
    return leavs_app(args)
