"""OpenZiti client side: controller API client, router links, edge connections, contexts."""

from __future__ import annotations
