"""``liftstream worker``: the ingest process (:mod:`workers.ingest.worker`), its guard of
stored offsets against the log (:mod:`workers.ingest.guard`) and its answers to refusals
(:mod:`workers.ingest.refusals`); the commit sequence of a batch is :mod:`stream.commit`."""

from workers.ingest.refusals import redis_error_kind
from workers.ingest.worker import CoPartitioningError, IngestWorker, make_producer, run_worker

__all__ = ["CoPartitioningError", "IngestWorker", "make_producer", "redis_error_kind",
           "run_worker"]
