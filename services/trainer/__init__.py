"""Trainer service: the gRPC face of the DeepSpeed rank group (`mpo.trainer`)."""
