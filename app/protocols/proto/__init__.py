"""The Open Inference Protocol v2 gRPC messages and service (inference.proto), compiled.

The generated modules are committed, so that serving needs only `grpcio` and `protobuf`;
`python -m app.protocols.proto` (with `grpcio-tools` installed) regenerates them.
"""
