"""Generated protobuf/gRPC stubs of the `mpo.v1` contracts (from `protos/mpo/v1/*.proto`).

Regenerate with `python protos/generate.py`; never edit the `*_pb2*` files by hand.
"""
