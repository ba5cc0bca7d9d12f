"""DeiT-S/16 on ImageNet-1k (Touvron et al., 2021), for a TPU pod or a multi-GPU host.

    vitjax train experiments/deit_imagenet.py --workdir /shared/runs/deit_s --distributed \
        --set data.manual_dir=/path/to/imagenet_tars --set data.data_dir=/path/to/tfds

The work directory must be on a file system every host sees (checkpoints are written by all).
ImageNet is prepared by TFDS from the manually downloaded ILSVRC2012 tars in data.manual_dir (once,
into data.data_dir). DeiT's recipe as vitjax implements it: 300 epochs at global batch 1024, AdamW
lr 5e-4 * batch / 512 with 5 warmup epochs from 1e-6 and cosine decay to 1e-5, weight decay 0.05
(not on biases, norms, class token or position embedding), label smoothing 0.1, mixup 0.8 and
cutmix 1.0 (switch 0.5), RandomResizedCrop(0.08-1, bicubic) + flip + ColorJitter(0.4), eval at
224 after a resize to 256 (crop_pct 0.875).

Not (yet) in vitjax, so not in this recipe: stochastic depth (drop path 0.1), RandAugment
(rand-m9-mstd0.5-inc1), random erasing 0.25 and repeated augmentation, which DeiT also uses;
expect a lower top-1 than DeiT's 79.8% until they are added. On 2 hosts or more, set fsdp > 1 to
shard params and optimizer state if memory is short (ViT-S does not need it).
"""

import ml_collections

IMAGENET_TRAIN = 1_281_167
BATCH = 1024


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = dict(name="deit_small_patch16_224", num_classes=1000)
    config.objective = dict(name="supervised", label_smoothing=0.1, mixup_alpha=0.8, cutmix_alpha=1.0,
                            mix_prob=1.0, switch_prob=0.5)
    config.data = dict(source="imagenet2012", train_split="train", eval_split="validation", image_size=224,
                       augment="deit", interpolation="bicubic", eval_crop_pct=0.875)
    config.batch_size = BATCH
    steps_per_epoch = IMAGENET_TRAIN // BATCH
    config.total_steps = 300 * steps_per_epoch
    config.optimizer = dict(name="adamw", base_lr=5e-4, lr_reference_batch=512, warmup_steps=5 * steps_per_epoch,
                            warmup_lr=1e-6, min_lr=1e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05)
    config.fsdp = 1
    config.log_every = 100
    config.eval_every = 10 * steps_per_epoch
    config.checkpoint_every = 2 * steps_per_epoch
    config.keep_checkpoints = 3
    return config
