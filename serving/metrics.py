"""Prometheus metrics of one app instance.

One process (one uvicorn worker, the Kubernetes layout in deploy/): each app
has its own registry (several apps can live in one test process) plus the
process, platform and GC collectors.

Several workers (``twotower serve --workers N``): ``serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers start
(the settings' ``metrics_dir``, read with the other settings and handed to
:class:`Metrics`), so
prometheus_client keeps every value in per-process files there and any
worker's ``/metrics`` reports the sum over all workers (counters and
histograms: monotone across scrapes whichever worker answers). Per-worker
gauges (model version, index size, staleness, cache size) carry a ``pid``
label. Process metrics (CPU, memory) are per process and are left out in that
mode; scrape them from the pod, or run one worker per pod.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
STORE_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """All serving metrics, registered in ``self.registry``.

    Args:
      multiprocess_dir: prometheus_client's multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``,
        the settings' ``metrics_dir``), or None when this process reports on its own.
    """

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        r = self.registry = CollectorRegistry()
        self.multiprocess = multiprocess_dir is not None
        if not self.multiprocess:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self._answer_metrics(r)
        self._degraded_metrics(r)
        self._input_metrics(r)
        self._model_metrics(r)
        self._refusal_metrics(r)
        self._model_labels: tuple[str, str, str] | None = None
        self._published: str | None = None
        self._served: str | None = None

    def _answer_metrics(self, r: CollectorRegistry) -> None:
        """How answers are made: latency, store reads, filtering, widening, fallbacks."""
        self.latency = Histogram(
            "twotower_http_request_duration_seconds",
            "HTTP request latency by route template and status code",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_read = Histogram(
            "twotower_store_read_duration_seconds",
            "Online store user-state reads (outcome ok, error or timeout; timeouts end at the budget)",
            ["outcome"],
            buckets=STORE_BUCKETS,
            registry=r,
        )
        self.filtered = Counter(
            "twotower_filtered_items_total",
            "Blocked items (dislikes, exclude, seen) that ranked above the last returned item: "
            "items filtering took out of answers",
            registry=r,
        )
        self.widened = Counter(
            "twotower_search_widenings_total",
            "Extra FAISS searches needed to keep k after filtering",
            registry=r,
        )
        self.exact = Counter(
            "twotower_exact_fallbacks_total",
            "Queries answered by exact catalog scoring after the index ran dry",
            registry=r,
        )
        self.demoted = Counter(
            "twotower_demoted_items_total",
            "Items pushed out of the top k by soft demotion",
            registry=r,
        )
        self.fallbacks = Counter(
            "twotower_fallbacks_total", "Recommendations served by a fallback", ["kind"], registry=r
        )

    def _degraded_metrics(self, r: CollectorRegistry) -> None:
        """Answers without the online store, and the dislike cache that keeps them filtered."""
        self.degraded = Counter(
            "twotower_degraded_responses_total",
            "Responses served without the online store",
            ["route"],
            registry=r,
        )
        self.degraded_users = Counter(
            "twotower_degraded_user_lookups_total",
            "Degraded requests with a user_id, by what this process knew of the user's dislikes "
            "(complete: from a store read; partial: only its own writes; none)",
            ["known"],
            registry=r,
        )
        self.cache_users = Gauge(
            "twotower_dislike_cache_users",
            "Users whose last-known dislikes this process holds for degraded mode",
            registry=r,
            multiprocess_mode="liveall",
        )

    def _input_metrics(self, r: CollectorRegistry) -> None:
        """What requests bring: unknown item ids, events written."""
        self.ignored_items = Counter(
            "twotower_ignored_item_ids_total", "Unknown item ids in requests (ignored)", registry=r
        )
        self.events = Counter(
            "twotower_events_total",
            "Events written via /v1/events (failed: outcome unknown, answered 503)",
            ["outcome"],
            registry=r,
        )

    def _model_metrics(self, r: CollectorRegistry) -> None:
        """The version served and published, its index, reloads, the micro-batcher."""
        self.model_info = Gauge(
            "twotower_model_info",
            "The model version being served (1 for the current one)",
            ["version", "device", "index_type"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.published_info = Gauge(
            "twotower_model_published_info",
            "The version ART/LATEST names (1 for the current one)",
            ["version"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.stale = Gauge(
            "twotower_model_stale",
            "1 while the published version is not the one being served (loading or failing)",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.index_size = Gauge(
            "twotower_index_items",
            "Items in the served FAISS index",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.reloads = Counter(
            "twotower_model_reloads_total",
            "Model loads by outcome (failed loads are retried with backoff)",
            ["outcome"],
            registry=r,
        )
        self.batch_size = Histogram(
            "twotower_batch_size",
            "Queries per tower call / FAISS search",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batcher_restarts = Counter(
            "twotower_batcher_restarts_total",
            "Times the micro-batcher task died and was restarted",
            registry=r,
        )

    def _refusal_metrics(self, r: CollectorRegistry) -> None:
        """What the API refused or corrected: 401s, 429s, event times ahead of its clock."""
        self.auth_refused = Counter(
            "twotower_auth_refused_total",
            "Requests refused with 401 by why (missing, malformed or unknown key; never the key)",
            ["reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "twotower_rate_limited_total",
            "Requests refused with 429 by this process's rate limit",
            registry=r,
        )
        self.ts_adjusted = Counter(
            "twotower_event_ts_adjusted_total",
            "Events whose ts was ahead of the server's clock by more than the allowance and "
            "was recorded as the receive time",
            registry=r,
        )

    def set_model(self, version: str, num_items: int, device: str, index_type: str) -> None:
        labels = (version, device, index_type)
        if self._model_labels is not None and self._model_labels != labels:
            self.model_info.labels(*self._model_labels).set(0)
        self._model_labels = labels
        self.model_info.labels(*labels).set(1)
        self.index_size.set(num_items)
        self._served = version
        self.stale.set(int(self._published is not None and self._published != version))

    def set_published(self, version: str | None) -> None:
        """Record what ART/LATEST names (called at every reload check)."""
        if version == self._published:
            return
        if self._published is not None:
            self.published_info.labels(self._published).set(0)
        self._published = version
        if version is not None:
            self.published_info.labels(version).set(1)
        self.stale.set(int(version is not None and version != self._served))

    def render(self) -> tuple[bytes, str]:
        """The exposition text: this app's registry, or the sum over workers in multiprocess mode."""
        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_process_dead(multiprocess_dir: Path | None, pid: int | None = None) -> None:
    """Drop this worker's live gauges from the multiprocess directory (at worker shutdown)."""
    if multiprocess_dir is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(os.getpid() if pid is None else pid)
