"""streamer: bidirectional streaming audio inference on a supervised group of processes.

Subpackages, one concept each: `transport` (ZeroMQ links, shared-memory pools, messages),
`actors` (decoder, segmenter, model actors, models), `front` (the WebSocket and gRPC
sessions), `supervisor` (who runs, who is restarted), `runtime` (config, topology, clocks,
metrics, telemetry), `client` (the streaming client and `top`), `api` (the gRPC schema).
Actors depend on transport and runtime, never on the front or the supervisor.
"""

__version__ = "0.1.0"
