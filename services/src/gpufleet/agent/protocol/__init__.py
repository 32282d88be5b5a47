"""Backend.AI 23.09 manager<->agent protocol: codec, RPC server and client, the RPC functions."""
