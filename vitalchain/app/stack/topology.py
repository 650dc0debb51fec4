"""Topics and databases the pipeline expects; created at ``stack up`` (tansu keeps nothing on restart)."""

from __future__ import annotations

import contextlib

import httpx

from vitalchain.config import Settings


def ensure_topics(settings: Settings) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="vitalchain-stack")
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(settings.raw_topic, settings.partitions, 1),
                  NewTopic(settings.dlq_topic, 1, 1)]
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
    finally:
        admin.close()


def ensure_database(settings: Settings) -> None:
    response = httpx.post(f"{settings.influx_url}/query",
                          params={"q": f'CREATE DATABASE "{settings.influx_db}"'}, timeout=10)
    response.raise_for_status()
