"""Soak with faults: mixed traffic on loopback while the service is hot-reloaded,
its Redis killed and restarted, a corrupt version published and the artifact
volume filled during a pipeline export; then every acknowledged event is
checked against the event log.

    python -m bench.soak                      # 180 s of traffic -> bench/results/soak.{json,md}
    python -m bench.soak --duration 30 --name soak_smoke --out /tmp/x   # the CI smoke

Everything is real and owned by the run: a ``redis-server`` (AOF,
``appendfsync always``) in a temp dir, ``twotower ingest`` / ``pipeline`` /
``serve`` as a user runs them, wrk for recommend load (a Python client when
wrk is not installed; the results say which), Python clients for events (each
acknowledged event logged client-side) and for checking answers. The artifact
directory is a small tmpfs when the machine allows mounting one (root);
otherwise the disk-full fault is reported as not run.

Timeline (fractions of ``--duration`` after the load starts):
  0.05  pipeline with the artifact volume full: must fail, publish nothing
  then  space returns, pipeline again: must publish -> hot reload 1
  0.45  kill -9 Redis, 3 s down, restart: recommend degrades and recovers,
        events get 503 + Retry-After and are retried with the same ids
  0.65  a version with a truncated index, then one whose manifest disagrees
        with its items, each named by LATEST: the last good version keeps serving
  0.80  a good version published -> hot reload 2

Figures: acknowledged events lost / duplicated in the log, answers that mixed
versions or showed an acknowledged dislike, 5xx other than the documented
503s, degraded answers, memory of the server after warm-up and at the end.
The run exits 1 if any invariant is broken.
"""
