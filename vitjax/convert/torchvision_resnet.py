"""The torchvision ResNet layout, which timm's ResNets and the DINO and MoCo v3 ResNet-50 releases share.

DINO's backbone has no `fc` (it was replaced by an identity during training); MoCo v3's base encoder
has its projection MLP in `fc.0`, `fc.1`, ... instead, which only serves training.
"""

from __future__ import annotations

from vitjax.convert.table import Rule, conv, ignore, linear

BLOCK = r"layer(\d+)\.(\d+)\."  # one bottleneck's prefix; \1 is its stage (from 1), \2 its index


def batch_norm(source: str, target: str) -> list[Rule]:
    return [
        Rule(source + r"\.weight", target + "/scale"),
        Rule(source + r"\.bias", target + "/bias"),
        Rule(source + r"\.running_mean", target + "/mean"),
        Rule(source + r"\.running_var", target + "/var"),
        ignore(source + r"\.num_batches_tracked", "a training counter"),
    ]


def rules(config) -> list:
    """The table for a model with `config.num_classes` classes; with none, a checkpoint's classifier
    is set aside the way timm's `num_classes=0` does."""
    head = (
        [Rule(r"fc\.weight", "fc/kernel", linear), Rule(r"fc\.bias", "fc/bias")]
        if config.num_classes
        else [ignore(r"fc\.(?:weight|bias)", "the classifier, and the model is built without one (num_classes=0)")]
    )
    return [
        Rule(r"conv1\.weight", "conv1/kernel", conv),
        *batch_norm(r"bn1", "bn1"),
        Rule(BLOCK + r"conv(\d)\.weight", r"layer\1/\2/conv\3/kernel", conv),
        *batch_norm(BLOCK + r"bn(\d)", r"layer\1/\2/bn\3"),
        Rule(BLOCK + r"downsample\.0\.weight", r"layer\1/\2/downsample_conv/kernel", conv),
        *batch_norm(BLOCK + r"downsample\.1", r"layer\1/\2/downsample_bn"),
        *head,
        ignore(r"fc\.\d+\..*", "the MoCo v3 projection MLP, which only serves training"),
    ]
