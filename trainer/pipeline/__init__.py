"""The scheduled training job with a quality gate (``twotower pipeline``).

One run:
  1. takes an exclusive lock on ``ART/.pipeline.lock`` (``flock``: released by the
     OS if the process dies, so a killed run never blocks the next one);
  2. moves new events from the store's durable log into the Parquet event archive
     ``ART/events/`` (cursor-based, each event exactly once), or reads a frozen
     snapshot (``--snapshot``, see :mod:`trainer.pipeline.snapshot`);
  3. skips (exit 0) when fewer than ``pipeline.min_new_events`` events arrived since
     the last run that reached the gate, whatever that run's outcome;
  4. builds the training window (all archived events, or the last
     ``pipeline.window_days``), warm-starts from the published version
     (vocabularies grow, old ids keep rows), trains into a checkpoint directory
     keyed by the snapshot it trains on, and exports a *candidate* version
     without publishing it;
  5. scores candidate and published version on one shared holdout (same users,
     same catalog: :mod:`trainer.pipeline.gate`) and applies the gate;
  6. publishes only if the gate passes (or ``--force``), as a compare-and-swap
     against the version it was gated against; otherwise refuses with a reason;
  7. applies retention (one place: ``pipeline.keep_versions`` published-or-manual
     versions, ``pipeline.keep_refused`` refused candidates apart from them, and
     never the published or the previously published version) and writes a report.

Every run writes a report (:mod:`trainer.pipeline.reports`), also when it is skipped,
finds the lock taken or fails. A run killed at any point leaves LATEST on a
complete version; a re-run on the same snapshot resumes from its checkpoint,
a run on a new snapshot removes the stale checkpoints and starts fresh.

Where each concern lives: :mod:`~trainer.pipeline.config` (the ``pipeline``
section), :mod:`~trainer.pipeline.state` (lock, state file, checkpoints,
retention), :mod:`~trainer.pipeline.steps` (window, data set, warm start,
training), :mod:`~trainer.pipeline.gate` (shared holdout and the rules),
:mod:`~trainer.pipeline.snapshot` (frozen data for reproducible and
multi-worker runs), :mod:`~trainer.pipeline.reports` (JSON/HTML reports and
the gate history), :mod:`~trainer.pipeline.schedule` (``--every``) and
:mod:`~trainer.pipeline.run` (one run, in the order above).
"""
