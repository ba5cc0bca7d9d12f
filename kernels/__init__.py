"""Attention kernels for vitjax, installed as `vitjax.kernels` so the name cannot clash.

    reference.py   the materialised attention the models use for 'attn'/'attn_logits' (the oracle)
    stats.py       the attention statistics: definitions, token geometry, the merge rule, the API
                   every statistics kernel implements (read its docstring first)
    chunked.py     attention + statistics by query blocks in jnp (CPU path, oracle of the fused
                   kernels), the column pass (attention received), chosen rows, and the flash-style
                   custom_vjp every statistics kernel shares
    pallas_tpu.py  Pallas Mosaic TPU kernels for the same, splash attention, shard_map for pods
    rollout.py     attention rollout for chosen queries with O(N) memory per block
    dispatch.py    which implementation runs on this backend
"""
