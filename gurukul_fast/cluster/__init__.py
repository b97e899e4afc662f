"""Cluster-wide per-user limits and presence: the `ClusterStore` protocol and backends."""

from __future__ import annotations

from gurukul_fast.cluster.base import (
    ClusterStore,
    ClusterStoreUnavailable,
    PresenceHandler,
    load_cluster_store,
)

__all__ = ["ClusterStore", "ClusterStoreUnavailable", "PresenceHandler", "load_cluster_store"]
