"""Attention kernels for vitjax, installed as `vitjax.kernels` so the name cannot clash.

reference.py is the plain-jnp attention the models use today (materialised probabilities); fused
kernels that stream the statistics the analyses need (Triton on NVIDIA GPUs, Pallas on TPU, a
chunked jnp reference) are planned to sit beside it with the same contract.
"""
