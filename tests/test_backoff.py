"""The one backoff policy every retry loop uses."""

from __future__ import annotations

import pika

from facewarden.daemon import amqp
from facewarden.daemon.backoff import Backoff, backoff_delay


def test_delays_double_up_to_the_cap_and_jitter_stays_within_half_to_full():
    assert [backoff_delay(n, 0.5, 4.0, jitter=False) for n in range(1, 7)] == [0.5, 1, 2, 4, 4, 4]
    for n in range(1, 12):
        full = backoff_delay(n, 0.2, 30.0, jitter=False)
        for _ in range(50):
            assert full / 2 <= backoff_delay(n, 0.2, 30.0) <= full
    assert backoff_delay(10_000, 1.0, 300.0, jitter=False) == 300.0  # no overflow


def test_backoff_counts_failures_and_resets_after_a_success():
    b = Backoff(base=1.0, cap=8.0, jitter=False)
    assert [b.next() for _ in range(5)] == [1, 2, 4, 8, 8]
    assert b.failures == 5
    b.reset()
    assert b.failures == 0 and b.next() == 1


def test_every_connection_gets_one_attempt_a_socket_timeout_and_a_name():
    params = amqp.connection_parameters("amqp://u:secret@127.0.0.1:5672/%2F", heartbeat=7, role="results")
    assert isinstance(params, pika.URLParameters)
    assert params.connection_attempts == 1
    assert params.socket_timeout == amqp.SOCKET_TIMEOUT
    assert params.heartbeat == 7
    assert "results" in params.client_properties["connection_name"]
    assert amqp.redact_url("amqp://u:secret@127.0.0.1:5672/%2F") == "amqp://***@127.0.0.1:5672/%2F"
    assert "secret" not in amqp.redact_url("amqp://u:p@ss@h/")
