"""A tiny ViT on the synthetic task, for the trainer's tests (seconds on a CPU):

    vitjax train tests/configs/tiny_synthetic.py --workdir /tmp/tiny
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.model = dict(name="vit_tiny_patch16_224", image_size=32, patch_size=8, width=32, depth=1,
                        num_heads=2, mlp_dim=64, num_classes=4)
    config.objective = dict(label_smoothing=0.1, mixup_alpha=0.0, cutmix_alpha=0.0)
    config.data = dict(source="synthetic", image_size=32)
    config.batch_size = 16
    config.total_steps = 20
    config.optimizer = dict(base_lr=3e-3, lr_reference_batch=16, warmup_steps=2, min_lr=1e-4)
    config.log_every = 1
    config.eval_every = 10
    config.checkpoint_every = 10
    return config
