"""The embedded default ResNet (`resnet_scenes_64`): a small bottleneck ResNet trained from scratch
on vitjax_scenes at 64 px, the convolutional comparator of the embedded ViT
(experiments/scenes_vit.py), with the same data and augmentation. 892k parameters (3.6 MB of
float32 weights, BatchNorm statistics included). Its weights, config.json and metrics.jsonl ship
in vitjax/pretrained/ (92.5% test accuracy).

    vitjax train experiments/scenes_resnet.py --workdir runs/scenes_resnet

Two bottleneck blocks per stage, stem width 16 (stage widths 16-128, outputs 64-512). BatchNorm
trains on batch statistics (over the global batch); its running averages (momentum 0.1) are what
evaluation and the exported params use. 1500 steps of batch 64 (9.6 epochs): 25 minutes on a
busy 2-core CPU (convolutions run far below the matmul peak on CPU). The trained params are
exported to WORKDIR/params for `vitjax.load('resnet50.a1_in1k', checkpoint=...)`.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = dict(name="resnet50.a1_in1k", image_size=64, layers=(2, 2, 2, 2), width=16, num_classes=10)
    config.objective = dict(name="supervised", label_smoothing=0.1, mixup_alpha=0.0, cutmix_alpha=0.0)
    config.data = dict(source="vitjax_scenes/size64", train_split="train", eval_split="test", image_size=64,
                       augment="simple", eval_crop_pct=1.0)
    config.batch_size = 64
    config.total_steps = 1500
    config.optimizer = dict(name="adamw", base_lr=2e-3, lr_reference_batch=64, warmup_steps=100,
                            min_lr=1e-5, weight_decay=0.05)
    config.log_every = 50
    config.eval_every = 500
    config.checkpoint_every = 500
    return config
