"""Kafka with credentials (issue 15): EVENTLY_KAFKA_* settings go to every
librdkafka client, so evently can reach a broker that only admits SASL
clients. Against a real broker with a SASL_PLAINTEXT (PLAIN) listener: with
the right credentials the relay publishes (a row is marked published only
after the broker acknowledged it); without them, or with a wrong password,
nothing is published and nothing is lost (the rows wait in the outbox). A
property librdkafka refuses stops the start, named, its value never logged."""
import time

import pytest

from api_support import book, new_event, sql, start_api
from conftest import stop_at_session_end, wait_for
from kafka_broker import Broker

SASL = {"EVENTLY_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "EVENTLY_KAFKA_SASL_MECHANISM": "PLAIN",
        "EVENTLY_KAFKA_SASL_USERNAME": "evently"}


@pytest.fixture(scope="module")
def broker():
    b = Broker(sasl_users={"evently": "evently-secret"}).start()
    stop_at_session_end(b.stop)
    try:
        yield b
    finally:
        b.stop()


def published(api, event_id):
    rows = sql(api, "SELECT published_at FROM outbox WHERE aggregate_id = $1", event_id)
    return rows if rows and all(r["published_at"] for r in rows) else None


def one_booking(api):
    ev = new_event(api, capacity=10)["id"]
    assert book(api, api.users[0], ev, 1).status == 201
    return ev


def test_the_relay_publishes_to_a_sasl_broker_with_the_right_credentials(broker):
    api = start_api("kafka-sasl", users=1, prefix="sasl", env=dict(
        SASL, EVENTLY_KAFKA_BROKERS=broker.brokers, EVENTLY_KAFKA_SASL_PASSWORD="evently-secret"))
    try:
        ev = one_booking(api)
        wait_for(lambda: published(api, ev), timeout=60, what="the relay to publish through SASL")
    finally:
        api.stop_and_check()


@pytest.mark.parametrize("creds", [{"EVENTLY_KAFKA_SASL_PASSWORD": "wrong-secret"}, None])
def test_without_the_right_credentials_nothing_is_published_and_nothing_lost(broker, creds):
    env = dict(SASL, **creds) if creds else {}
    api = start_api("kafka-nosasl", users=1, prefix="nosasl", env=dict(env, EVENTLY_KAFKA_BROKERS=broker.brokers))
    try:
        ev = one_booking(api)
        time.sleep(8)  # what the right credentials publish within a second or two
        rows = sql(api, "SELECT published_at FROM outbox WHERE aggregate_id = $1", ev)
        assert rows and not any(r["published_at"] for r in rows), rows
    finally:
        api.stop_and_check()


def test_a_refused_property_stops_the_start_naming_it_never_its_value(start_server):
    """Checked at start, not at the first message: a serve with a property
    librdkafka refuses exits, naming the property, never its value."""
    srv = start_server("kafka-badprop", wait=False, env={
        "EVENTLY_KAFKA_BROKERS": "127.0.0.1:1", "EVENTLY_KAFKA_NO_SUCH_SETTING": "s3cret-value"})
    assert srv.wait(timeout=60) != 0
    log = srv.log_text()
    assert "kafka property no.such.setting" in log, log
    assert "s3cret-value" not in log


def test_a_secret_key_too_short_stops_the_start(start_server):
    srv = start_server("short-secret", wait=False, env={"EVENTLY_SECRET_KEY": "short"})
    assert srv.wait(timeout=60) != 0
    log = srv.log_text()
    assert "EVENTLY_SECRET_KEY must be at least 16 characters" in log, log
