"""Publishing messages to the experiment topics: :func:`prepare_topics` (broker reachable,
topics created, equal partition counts) and :func:`publish` (used by ``replay`` and
``simulate``), which sends with ``acks="all"``, an optional rate limit and a progress bar on
stderr, and returns only after the broker acknowledged every message.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Final

import redis.exceptions

from stream.kafka import ensure_topics, make_producer, wait_for_broker
from workers.cli.prologue import fail
from workers.dev.progress import Progress
from workers.settings import Settings

__all__ = ["KINDS", "Message", "PublishError", "ReplayError", "check_rate", "guard_publishing",
           "prepare_topics", "publish"]

#: (topic kind ``"exposures"`` | ``"events"``, key, value)
Message = tuple[str, bytes, bytes]
KINDS: Final = ("exposures", "events")


class ReplayError(ValueError):
    """Bad input (file, column, value, experiment); the CLI exits with status 2."""


class PublishError(RuntimeError):
    """The broker did not acknowledge every message, or the topics are unusable."""


def check_rate(rate: float | None) -> None:
    """ReplayError unless ``rate`` is ``None`` (no limit) or a positive number."""
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        raise ReplayError(f"--rate must be a positive number of messages/s, got {rate}")


def prepare_topics(settings: Settings, timeout_s: float = 30.0) -> int:
    """Wait for the broker, create missing topics; return their (equal) partition count."""
    sec = settings.kafka_options()
    wait_for_broker(settings.kafka_bootstrap, timeout_s=timeout_s, **sec)
    exposures, events = settings.topic_exposures, settings.topic_events
    counts = ensure_topics(settings.kafka_bootstrap,
                           {exposures: settings.partitions, events: settings.partitions},
                           strict=False, timeout_s=timeout_s, **sec)
    if counts[exposures] != counts[events]:
        raise PublishError(f"topics {exposures!r} ({counts[exposures]} partitions) and "
                           f"{events!r} ({counts[events]} partitions) must have the same "
                           f"partition count: a unit's exposure and events must meet")
    return counts[exposures]


def publish(settings: Settings, messages: Iterable[Message], *, total: int | None = None,
            rate: float | None = None, progress: bool = True, label: str = "publishing",
            client_id: str = "liftstream-replay") -> int:
    """Send every message (acks=all), flush, and return the count; PublishError on failure.

    ``rate`` limits to that many messages per second; the progress bar goes to stderr when
    it is a TTY and ``progress`` is true.
    """
    check_rate(rate)
    prepare_topics(settings)
    topics = {"exposures": settings.topic_exposures, "events": settings.topic_events}
    producer = make_producer(settings.kafka_bootstrap, client_id=client_id, acks="all",
                             **settings.kafka_options())
    failures: list[BaseException] = []

    def failed(exc: BaseException) -> None:
        failures.append(exc)

    bar = Progress(label, total, progress)
    sent = 0
    start = time.monotonic()
    try:
        for kind, key, value in messages:
            topic = topics.get(kind)
            if topic is None:
                raise ValueError(f"unknown topic kind {kind!r}; expected one of {KINDS}")
            producer.send(topic, key=key, value=value).add_errback(failed)
            sent += 1
            if rate is not None:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0.002:
                    time.sleep(ahead)
            bar.update(sent)
        producer.flush()
    finally:
        bar.close(sent)
        producer.close(timeout=10)
    if failures:
        raise PublishError(f"{len(failures)} of {sent} messages were not acknowledged by the "
                           f"broker; first error: {failures[0]!r}")
    return sent


def guard_publishing(command: str, settings: Settings, body: Callable[[], int]) -> int:
    """``body()``, its failures reported in one line: bad input (:class:`ReplayError`, exit
    2), messages not acknowledged or a broker timeout (1), Redis errors (1)."""
    try:
        return body()
    except ReplayError as exc:
        return fail(command, str(exc))
    except (PublishError, TimeoutError) as exc:
        return fail(command, str(exc), 1)
    except redis.exceptions.RedisError as exc:
        return fail(command, f"Redis at {settings.redacted()['redis_url']}: {exc}", 1)
