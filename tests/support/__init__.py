"""Shared test helpers: data paths and definitions (:mod:`tests.support.data`), the ingest
worker in a thread and publishing (:mod:`tests.support.workers`), quiescence by watermarks
(:mod:`tests.support.quiescence`) and real-Redis fixtures (:mod:`tests.support.fixtures`)."""
