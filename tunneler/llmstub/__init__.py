"""A small OpenAI-compatible chat endpoint for demos and tests (`tunneler llm-stub`).

`chat` is the sans-IO core (request validation, deterministic replies, response and
server-sent-event encoding); `server` is the aiohttp adapter and the CLI handler.
"""

from __future__ import annotations
