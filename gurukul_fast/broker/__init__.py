"""Brokers: share chat events between processes and nodes (Redis pub/sub, NATS)."""

from __future__ import annotations

from gurukul_fast.broker.base import (
    Broker,
    BrokerError,
    BrokerStats,
    BrokerUnavailable,
    DeliverRemote,
    GapHandler,
    UnknownBrokerScheme,
    broker_scheme,
    load_broker,
    new_node_id,
)

__all__ = [
    "Broker",
    "BrokerError",
    "BrokerStats",
    "BrokerUnavailable",
    "DeliverRemote",
    "GapHandler",
    "UnknownBrokerScheme",
    "broker_scheme",
    "load_broker",
    "new_node_id",
]
