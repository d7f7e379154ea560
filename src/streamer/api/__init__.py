"""The public API's gRPC definitions: `streamer.proto` and the code protoc made from it.

Regenerate after changing the .proto (grpcio-tools, any venv): `make proto`.
"""
