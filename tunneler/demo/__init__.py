"""The private-LLM scenario on one machine: three network namespaces, the embedded network,
`tunneler run` in front of unmodified clients and `tunneler run-host` in front of an LLM endpoint
that accepts no inbound connection.

`python -m tunneler.demo` (as root; `make demo`) runs it step by step and tears it down.
`scenario.Scenario` is the topology shared by the demo, the end-to-end test and the benchmark;
`netns` creates and removes namespaces; `clients` holds the programs run inside them.
"""

from __future__ import annotations
