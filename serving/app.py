"""The FastAPI application factory. Importing this module loads nothing heavy.

``create_app(settings)`` builds the app; its lifespan pins thread pools and
keeps TensorFlow off the GPU (see :func:`serving.model.configure_tf_gpus`),
starts the batcher, opens the store (a store that is down does not stop
start-up: the API answers degraded and /readyz says so), loads the published
version, freezes the start-up heap out of the garbage collector's way, and
starts following ART/LATEST.

Why the freeze: importing TensorFlow leaves ~300k long-lived objects that
every full collection would traverse again (~200 ms with the event loop
stopped, the p99 of a loaded server). ``gc.freeze()`` after one collection at
start-up, before any request is served, moves them out of every later pass.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.api_keys import KeyRing
from serving.auth import AccessMiddleware
from serving.batcher import Batcher, BatcherClosed
from serving.cancel import cancel_task
from serving.deps import AppState
from serving.direct import DirectRecommend
from serving.docs import ASSETS_PATH as DOCS_ASSETS_PATH
from serving.docs import install_docs
from serving.metrics import Metrics, mark_process_dead
from serving.middleware import LimitsAndTimingMiddleware
from serving.model import LoadedModel
from serving.openapi import apply_access, apply_limits
from serving.ratelimit import RateLimiter
from serving.reload import ModelHolder, Reloader
from serving.retrieval import Demotion
from serving.routes import RECOMMEND_PATH, InputError, floor_router, router
from serving.service import reopen_store
from serving.settings import Settings, load_settings
from serving.usercache import DislikeCache

log = logging.getLogger(__name__)

_STATUS_NAMES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


def _field(loc: Any) -> str:
    return ".".join(str(p) for p in loc)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        message = err.get("msg", "invalid")
        loc = err.get("loc", ())
        if err.get("type") == "json_invalid":
            loc = ("body",)
            message = f"body is not valid JSON: {err.get('ctx', {}).get('error', 'decode error')} (at character {err['loc'][-1]})"
        elif err.get("type") == "extra_forbidden":
            message = "unknown field (not part of the request schema)"
        errors.append(
            {"field": _field(loc), "message": message, "type": err.get("type", "value_error")}
        )
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return JSONResponse(
        {"error": "validation_error", "detail": detail, "errors": errors}, status_code=422
    )


async def _input_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InputError)
    err = {"field": exc.field, "message": exc.message, "type": exc.type}
    return JSONResponse(
        {"error": "validation_error", "detail": str(exc), "errors": [err]}, status_code=422
    )


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    name = _STATUS_NAMES.get(exc.status_code, "error")
    detail = str(exc.detail)
    cause = exc.__cause__
    if exc.status_code == 400 and cause is not None:
        # FastAPI's generic "error parsing the body": say what was wrong with it.
        if isinstance(cause, RecursionError):
            detail = "body: JSON is nested too deeply to parse"
        elif isinstance(cause, UnicodeDecodeError):
            detail = f"body: not valid UTF-8 JSON ({cause.reason} at byte {cause.start})"
        else:
            detail = f"body: cannot be parsed ({type(cause).__name__}: {cause})"
    return JSONResponse(
        {"error": name, "detail": detail, "errors": []},
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _batcher_closed(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"error": "unavailable", "detail": f"retrieval is not running: {exc}", "errors": []},
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(
        {"error": "internal_error", "detail": "internal error (logged)", "errors": []},
        status_code=500,
    )


async def _open_store(state: AppState) -> None:
    from feature_store import open_store

    s = state.settings
    try:
        store = open_store(s.store_url)
    except Exception as exc:  # a bad URL is a configuration error: refuse to start
        raise ValueError(f"store_url {s.public()['store_url']!r}: {exc}") from exc
    state.store = store
    try:
        await asyncio.wait_for(store.open(), max(1.0, s.store_timeout_s * 4))
        state.store_error = None
    except Exception as exc:
        # Start anyway: recommendations degrade to the request's own lists, /readyz reports 503.
        state.store_error = f"{type(exc).__name__}: {exc}"
        log.warning(
            "store %s unreachable at start-up: %s", s.public()["store_url"], state.store_error
        )


async def _store_watchdog(state: AppState, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        if state.store_error is not None:
            await reopen_store(state)


def _build_state(settings: Settings) -> AppState:
    metrics = Metrics(settings.metrics_dir)
    holder = ModelHolder()

    def on_swap(model: Any) -> None:
        metrics.set_model(
            model.version,
            model.num_items,
            model.index.device,
            str(model.manifest["index"].get("type")),
        )
        metrics.reloads.labels("ok").inc()

    demotion = Demotion(settings.demote_weight, settings.demote_threshold, settings.demote_near)

    def prepare(model: LoadedModel) -> None:
        if demotion.enabled:  # the per-version threshold and lengths, before it serves
            model.demote_threshold = demotion.threshold_for(model)
            _ = model.unit_length

    reloader = Reloader(
        settings.artifacts,
        holder,
        prepare=prepare,
        poll_s=settings.reload_poll_s,
        retry_max_s=settings.reload_retry_max_s,
        use_gpu=settings.use_gpu,
        on_swap=on_swap,
        on_failure=lambda _v, _e: metrics.reloads.labels("failed").inc(),
        on_published=metrics.set_published,
    )
    batcher = Batcher(
        settings.batch_max_size,
        settings.batch_max_wait_ms,
        demotion,
        on_batch=metrics.batch_size.observe,
        on_restart=metrics.batcher_restarts.inc,
    )
    return AppState(
        settings=settings,
        metrics=metrics,
        holder=holder,
        batcher=batcher,
        reloader=reloader,
        dislike_cache=DislikeCache(settings.dislike_cache_users, settings.dislike_cache_items),
    )


def _configure_runtime(settings: Settings) -> None:
    from serving.model import configure_tf_gpus, configure_threads

    configure_threads(settings.tf_threads, settings.faiss_thread_count())
    log.info("TensorFlow GPUs: %s", configure_tf_gpus(settings.tf_gpu))


def _freeze_heap() -> None:
    """One collection, then move every surviving object out of later GC passes (start-up only)."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info(
        "froze %d start-up objects out of the garbage collector (%.0f ms)",
        gc.get_freeze_count(),
        (time.perf_counter() - started) * 1000,
    )


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: AppState = app.state.twotower
    s = state.settings
    await asyncio.to_thread(_configure_runtime, s)
    await state.batcher.start()
    await _open_store(state)
    await state.reloader.check_once()
    if state.holder.current is None:
        log.warning(
            "no model loaded yet (%s); /v1/recommend answers 503 until a version is published",
            state.holder.last_error or f"nothing published in {s.artifacts}",
        )
    _freeze_heap()  # nothing is served yet: the one pause costs no request
    state.reloader.start()
    watchdog = asyncio.create_task(
        _store_watchdog(state, min(5.0, s.reload_poll_s)), name="twotower-store-watchdog"
    )
    try:
        yield
    finally:
        await cancel_task(watchdog)
        await state.reloader.stop()
        await state.batcher.stop()
        if state.store is not None:
            try:
                await state.store.close()
            except Exception:
                log.exception("closing the store failed")
        mark_process_dead(s.metrics_dir)


def create_app(settings: Settings) -> FastAPI:
    """The API for ``settings`` (nothing is loaded until the lifespan starts)."""
    if not settings.artifacts.is_dir():
        from common.artifacts import ArtifactError

        raise ArtifactError(f"artifacts directory {settings.artifacts} does not exist")
    app = FastAPI(
        title="twotower",
        summary="Two-tower candidate retrieval with negative-feedback filtering",
        version=_package_version(),
        lifespan=_lifespan,
        # /docs and /redoc come from serving.docs: assets from the package, not a CDN.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    state = _build_state(settings)
    app.state.twotower = state
    app.include_router(router)
    if settings.floor_route:
        app.include_router(floor_router)
    install_docs(app)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(BatcherClosed, _batcher_closed)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    if settings.direct_recommend:
        # Added first, so innermost: access control and the limits/timing middleware run first.
        app.add_middleware(
            DirectRecommend,
            state=state,
            handlers=app.exception_handlers,
            route=next(r for r in router.routes if getattr(r, "path", None) == RECOMMEND_PATH),
        )
    _add_access_control(app, settings, state)
    app.add_middleware(
        LimitsAndTimingMiddleware,
        metrics=state.metrics,
        max_body_bytes=settings.max_body_bytes,
        fixed_routes=(app.openapi_url or "", DOCS_ASSETS_PATH),
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = apply_access(
                apply_limits(FastAPI.openapi(app), settings), settings
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _add_access_control(app: FastAPI, settings: Settings, state: AppState) -> None:
    """API keys (serving.api_keys) and the rate limit, checked by serving.auth's middleware
    when either is on: nothing runs otherwise.

    The key file is read here, so a missing or empty one stops the start
    (``KeyConfigError``, exit 2), in every worker process as in a single one.
    """
    keyring = KeyRing.from_settings(settings)
    limiter = None
    if settings.rate_limit_per_s > 0:
        burst = settings.rate_limit_burst or max(1.0, settings.rate_limit_per_s)
        limiter = RateLimiter(settings.rate_limit_per_s, burst, settings.rate_limit_clients)
    mode = settings.auth_mode
    if mode == "none" and not settings.metrics_auth and limiter is None:
        # Development only (production refuses auth=none): loud when reachable from the network.
        loopback = settings.host in ("127.0.0.1", "localhost", "::1")
        log.log(
            logging.INFO if loopback else logging.WARNING,
            "no API keys: every route is open (TWOTOWER_SERVE__API_KEYS or "
            "TWOTOWER_SERVE__API_KEYS_FILE turn them on; see SECURITY.md)",
        )
        return
    app.add_middleware(
        AccessMiddleware,
        mode=mode,
        metrics_auth=settings.metrics_auth,
        keyring=keyring,
        limiter=limiter,
        metrics=state.metrics,
        templates=lambda: app.openapi()["paths"].keys(),
    )


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and worker processes: settings from the environment.

    A worker process's start, so the one place it reads its environment
    (:func:`serving.settings.load_settings`: deprecated names renamed, then the settings).
    """
    from common.tf_logging import import_tensorflow_quietly

    # Worker processes start fresh: keep TensorFlow's start-up notices out of their stderr too.
    import_tensorflow_quietly()
    return create_app(load_settings())


def _package_version() -> str:
    from common import __version__

    return __version__
