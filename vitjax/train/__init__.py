"""Training: a readable loop (`loop.py`), plug-in objectives (`objectives/`), orbax checkpoints that
resume exactly, and data-parallel or FSDP sharding over any number of devices and hosts.

    from vitjax.train import config, train
    state = train(config.load("experiments/scenes_vit.py", {"total_steps": 100}), "runs/vit")
"""

from vitjax.train.loop import train

__all__ = ["train"]
