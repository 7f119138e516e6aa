"""Serving configuration: one typed settings object, from defaults < environment < CLI.

Environment names (:mod:`serving.settings_env`): ``TWOTOWER_SERVE__<FIELD>``
(e.g. ``TWOTOWER_SERVE__BATCH_MAX_SIZE=32``), except the store, every command's
``TWOTOWER_STORE__URL``, and the Prometheus multiprocess directory,
``PROMETHEUS_MULTIPROC_DIR`` (:func:`env_name`). ``twotower serve`` flags
override them. Several uvicorn workers receive the settings through these same
variables (see :func:`serving.main.serve`), so every field must round-trip
through :meth:`Settings.to_env`. A serve variable that names no field, or a
deprecated name left in place, is refused; the program's start renames the
deprecated names (:func:`deprecated_env`, :func:`settings_environment`).

Degraded mode (the store fails or is slower than ``store_timeout_s``): every
process keeps the last-known dislikes of up to ``dislike_cache_users`` users
(filled by each successful state read and each ``/v1/events`` dislike it
writes) and merges them into every answer, so an acknowledged dislike stays
filtered while the store is down. A user this process has never seen cannot
be filtered by stored dislikes it does not know: ``degraded_unknown_users``
says whether such a request is answered from its own lists
(``"serve"``, the default: ``degraded: true`` tells the client, and the API
keeps answering through an outage, as docs/CONTRACT.md's "503 only while no model is
loaded" asks) or refused with 503 (``"refuse"``: for deployments that prefer
no answer to one that may repeat a dislike made through another pod).

Access (see ``SECURITY.md``): API keys come from ``api_keys`` (comma-separated)
and/or ``api_keys_file`` (one per line, re-read when it changes, so a
Kubernetes Secret volume rotates them without a restart). ``auth`` says which
routes need one (:func:`serving.auth.needs_key`); unset, it is ``writes`` once
any key source is configured and ``none`` otherwise. ``environment=production``
refuses to start without a key source or with ``auth=none``. The request rate
limit (``rate_limit_per_s``, ``rate_limit_burst``) is a token bucket per API
key, or per client IP for requests without a valid key, kept in each worker
process (N workers or pods allow N times the rate).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.config import rename_deprecated
from common.urls import DEFAULT_STORE_URL, STORE_URL_ENV, mask_password, redact_url
from feature_store.options import StoreURLError
from feature_store.urls import parse_url
from serving.settings_env import ENV_PREFIX, MULTIPROC_ENV, deprecated_names, unknown_env

log = logging.getLogger(__name__)

#: Hard caps of the public API (docs/CONTRACT.md): settings may lower them, never raise them.
K_CAP = 1000
LIST_CAP = 10_000
EVENTS_CAP = 10_000
#: Soft demotion's defaults (``demote_weight``, ``demote_near``): ``python -m
#: bench.demotion``'s pick on ml-100k validation (``bench.demotion.choose``).
DEMOTE_WEIGHT = 0.5
DEMOTE_NEAR = 0.05


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Everything ``serving`` reads; validated once at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        validate_by_name=True,
    )

    # --- where things are -------------------------------------------------------
    artifacts: Path = Field(description="artifact directory (ART); the app follows ART/LATEST")
    store_url: str = Field(
        DEFAULT_STORE_URL,
        validation_alias=STORE_URL_ENV,
        description="online store: redis://[:password@]host:port/db, rediss://..., sqlite:///path "
        f"(variable {STORE_URL_ENV}, every command's)",
    )
    environment: Literal["development", "production"] = Field(
        "development",
        description="production refuses unsafe values (sqlite store, unauthenticated remote redis)",
    )

    # --- HTTP server ------------------------------------------------------------
    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8000, ge=0, le=65535, description="bind port (0 = any free port)")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes")

    # --- request limits -----------------------------------------------------------
    max_k: int = Field(K_CAP, ge=1, le=K_CAP, description="largest k accepted by /v1/recommend")
    default_k: int = Field(20, ge=1, le=K_CAP, description="k when the request omits it")
    max_list_length: int = Field(
        1000, ge=1, le=LIST_CAP, description="longest history/dislikes/exclude list in a request"
    )
    max_events: int = Field(
        1000, ge=1, le=EVENTS_CAP, description="most events per /v1/events call"
    )
    max_body_bytes: int = Field(
        1_000_000, ge=1024, description="request bodies larger than this get 413 (bytes)"
    )

    # --- micro-batching -----------------------------------------------------------
    batch_max_size: int = Field(64, ge=1, le=4096, description="most queries per tower call/search")
    batch_max_wait_ms: float = Field(
        1.0, ge=0.0, le=100.0, description="longest wait for more queries once one is queued (ms)"
    )

    # --- dependencies ---------------------------------------------------------------
    store_timeout_s: float = Field(
        0.25,
        gt=0.0,
        le=30.0,
        description="per-request store read budget (s); past it the answer is degraded",
    )
    store_write_timeout_s: float = Field(
        1.0,
        gt=0.0,
        le=30.0,
        description="longest /v1/events waits for the store (s); past it the answer is 503",
    )
    dislike_cache_users: int = Field(
        100_000,
        ge=0,
        le=10_000_000,
        description="users whose last-known dislikes this process keeps for degraded mode (LRU; 0 = off)",
    )
    dislike_cache_items: int = Field(
        5_000_000,
        ge=0,
        le=1_000_000_000,
        description="most dislikes held by that cache over all users (LRU eviction past it)",
    )
    degraded_unknown_users: Literal["serve", "refuse"] = Field(
        "serve",
        description="store down and the user not in the dislike cache: serve the request's own "
        "lists (degraded) or refuse with 503",
    )
    reload_poll_s: float = Field(
        2.0, gt=0.0, le=3600.0, description="how often ART/LATEST is checked for a new version (s)"
    )
    reload_retry_max_s: float = Field(
        60.0,
        gt=0.0,
        le=86_400.0,
        description="a version that failed to load is retried after reload_poll_s, doubling up to this (s)",
    )
    use_gpu: Literal["auto", "never"] = Field(
        "auto", description="auto: FAISS on GPU 0 when faiss.get_num_gpus() > 0 (not HNSW)"
    )
    tf_gpu: Literal["hidden", "memory_growth"] = Field(
        "hidden",
        description="hidden: TensorFlow sees no GPU (the user tower is small; the GPU is left to "
        "FAISS); memory_growth: TF may use GPUs but allocates memory as needed",
    )
    tf_threads: int = Field(
        1, ge=0, le=256, description="TF intra- and inter-op threads (0 = TF default)"
    )
    faiss_threads: int | None = Field(
        None,
        ge=0,
        le=256,
        description="most FAISS OpenMP threads a batch's search uses (one per 8 queries of the "
        "batch); unset: the cores this process may run on / workers, at least 1; 0 = OpenMP's "
        "default",
    )

    # --- access: API keys and rate limits (SECURITY.md) -----------------------------
    api_keys: SecretStr | None = Field(
        None,
        description="comma-separated API keys; clients send Authorization: Bearer KEY (or "
        "X-API-Key: KEY). Never logged or shown",
    )
    api_keys_file: Path | None = Field(
        None,
        description="file of API keys, one per line (blank lines and # comments ignored), e.g. "
        "a mounted Kubernetes Secret; re-read when it changes (checked at most once a second)",
    )
    auth: Literal["writes", "all", "none"] | None = Field(
        None,
        description="which routes need a key: writes = /v1/events and admin routes, all = every "
        "/v1/* route, none. Unset: writes when keys are configured, else none. /healthz and "
        "/readyz never need one",
    )
    metrics_auth: bool = Field(False, description="/metrics needs a key too (default: open)")
    rate_limit_per_s: float = Field(
        0.0,
        ge=0.0,
        le=1e6,
        description="requests per second to /v1/* per API key (per client IP without a valid "
        "key), token bucket in each worker process; 0 = no limit",
    )
    rate_limit_burst: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="token bucket size: requests a client may send at once "
        "(0 = max(1, rate_limit_per_s))",
    )
    rate_limit_clients: int = Field(
        100_000,
        ge=1,
        le=10_000_000,
        description="clients (keys or IPs) whose buckets each worker keeps (LRU; an evicted "
        "client starts again with a full bucket)",
    )

    direct_recommend: bool = Field(
        True,
        description="answer well-formed POST /v1/recommend requests without FastAPI's routing "
        "and dependency resolution (same code, limits and answers: serving/direct.py); false = "
        "every request through the FastAPI route",
    )
    floor_route: bool = Field(
        False,
        description="register POST /_floor (same body parsing, fixed answer): the benchmark floor",
    )
    metrics_dir: Path | None = Field(
        None,
        validation_alias=MULTIPROC_ENV,
        description=f"prometheus_client's multiprocess directory (variable {MULTIPROC_ENV}; "
        "serve --workers N sets a fresh one): /metrics sums every process writing there",
    )

    # --- soft demotion near fresh dislikes -----------------------------------------
    demote_weight: float = Field(
        DEMOTE_WEIGHT,
        ge=0.0,
        le=100.0,
        description="score penalty factor for items similar to fresh dislikes (score -= "
        "weight * max(0, cosine - threshold) * |u| |i|); 0 = off",
    )
    demote_near: float = Field(
        DEMOTE_NEAR,
        gt=0.0,
        le=1.0,
        description="the share of the served version's item pairs counted as near: an item "
        "is demoted above the cosine that share of pairs exceeds (computed per version "
        "at load; GET /v1/model shows it as serving.demote_threshold)",
    )
    demote_threshold: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="an absolute cosine to a recent dislike above which an item is "
        "demoted, in place of demote_near's per-version one",
    )
    demote_recent: int = Field(
        5, ge=1, le=100, description="how many recent dislikes demotion looks at"
    )
    demote_dislikes: Literal["fresh", "recent"] = Field(
        "fresh",
        description="which dislikes demotion reacts to: 'fresh' = those the served version "
        "never saw (stamped after the newest event it was trained from, manifest "
        "data.time_range.max, and the request's own dislikes; every stored one when the "
        "version has no times), the version has learned from the rest; 'recent' = the "
        "user's demote_recent latest dislikes whatever their age",
    )

    @field_validator("api_keys", "api_keys_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # compose passes an unset variable as "" (TWOTOWER_SERVE__API_KEYS: ${X:-}).
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_env(cls, data: Any) -> Any:
        unknown_env(os.environ, env_names())  # raises naming the variable and the nearest
        return data

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must not exceed max_k ({self.max_k})")
        try:
            parse_url(self.store_url)
        except StoreURLError as exc:
            raise ValueError(f"store_url: {mask_password(self.store_url, str(exc))}") from None
        if self.environment == "production":
            problem = production_store_problem(self.store_url)
            if problem is not None:
                raise ValueError(problem)
            if not self.has_key_source:
                raise ValueError(
                    f"environment=production needs API keys: set {ENV_PREFIX}API_KEYS "
                    f"(comma-separated) or {ENV_PREFIX}API_KEYS_FILE (one key per line)"
                )
            if self.auth == "none":
                raise ValueError(
                    f"environment=production refuses {ENV_PREFIX}AUTH=none: every route would "
                    "be open; use writes (the default) or all"
                )
        needs_keys = [
            name
            for name, on in (
                (f"{ENV_PREFIX}AUTH={self.auth}", self.auth in ("writes", "all")),
                (f"{ENV_PREFIX}METRICS_AUTH=true", self.metrics_auth),
            )
            if on
        ]
        if needs_keys and not self.has_key_source:
            raise ValueError(
                f"{' and '.join(needs_keys)} need API keys: set {ENV_PREFIX}API_KEYS or "
                f"{ENV_PREFIX}API_KEYS_FILE"
            )
        return self

    @property
    def has_key_source(self) -> bool:
        """Whether any API key source is configured (the keys themselves: serving.api_keys)."""
        return self.api_keys_file is not None or bool(
            self.api_keys is not None and self.api_keys.get_secret_value().strip(" ,")
        )

    @property
    def auth_mode(self) -> Literal["writes", "all", "none"]:
        """``auth``, or its default: ``writes`` with a key source, ``none`` without."""
        if self.auth is not None:
            return self.auth
        return "writes" if self.has_key_source else "none"

    def faiss_thread_count(self) -> int:
        """``faiss_threads``, or when unset the cores this process may use / ``workers``.

        A batch is searched while its requests wait, so the event loop and the
        search take turns more than they overlap: one worker may give a large
        batch's search every core; N workers on N cores get one each.
        """
        if self.faiss_threads is not None:
            return self.faiss_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, (cores or 1) // self.workers)

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables (for worker processes), by :func:`env_name`."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue  # unset: the worker's default is None too
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            out[env_name(name)] = str(value)
        return out

    def public(self) -> dict[str, object]:
        """Settings safe to show (the store password and the API keys are masked)."""
        data = self.model_dump(mode="json")
        if self.api_keys is not None:
            data["api_keys"] = "***"
        data["store_url"] = redact_url(self.store_url)
        return data


def production_store_problem(store_url: str) -> str | None:
    """Why ``store_url`` is refused with ``environment=production`` (None: accepted).

    An embedded file store cannot be shared by several pods and has no auth; a
    remote Redis without a password or TLS would expose every user's history.
    ``deploy/preflight.py`` calls this too (one rule, not two copies).
    """
    scheme = urlsplit(store_url).scheme.lower()
    if scheme == "sqlite":
        return "environment=production needs a redis:// or rediss:// store_url, not sqlite"
    parts = urlsplit(store_url)
    remote = not _is_loopback(parts.hostname or "")
    if remote and scheme == "redis" and not parts.password:
        return (
            "environment=production: a remote redis store needs a password "
            "(redis://:PASSWORD@host) or TLS (rediss://)"
        )
    return None


def env_name(field: str) -> str:
    """The variable of ``field``: ``TWOTOWER_SERVE__<FIELD>``, or the shared name it is read under."""
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else f"{ENV_PREFIX}{field.upper()}"


def env_names() -> dict[str, str]:
    """Variable -> field name, for every settings field (:func:`env_name`)."""
    return {env_name(name): name for name in Settings.model_fields}


def deprecated_env() -> dict[str, str]:
    """Old name -> new name of every setting that had one: ``TWOTOWER_SERVE_<FIELD>``, and
    the store's ``TWOTOWER_STORE_URL`` and ``TWOTOWER_SERVE_STORE_URL``."""
    return deprecated_names(env_names())


def settings_environment(environ: MutableMapping[str, str]) -> list[str]:
    """Rename the deprecated serve variables of ``environ`` (a program's start; see
    :func:`common.config.rename_deprecated`); returns the warnings.

    Raises:
      ConfigError: an old and a new name hold different values.
    """
    return rename_deprecated(environ, deprecated_env())


def load_settings(**values: Any) -> Settings:
    """Settings from the process environment, its deprecated names renamed first (each
    logged once), with ``values`` on top: the start of a worker process.

    Raises:
      ConfigError: an old and a new name hold different values.
      ValidationError: a setting does not validate.
    """
    for warning in settings_environment(os.environ):
        log.warning("%s", warning)
    return Settings(**values)
