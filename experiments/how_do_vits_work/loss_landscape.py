"""Park & Kim, "How Do Vision Transformers Work?" (ICLR'22), Fig. 1a: loss landscapes of a ViT
against a ResNet, on the embedded default models trained on vitjax_scenes.

    vitjax landscape --config experiments/how_do_vits_work/loss_landscape.py --out runs/loss_landscape

Their protocol (`ops/loss_landscapes.py`, `losslandscape.ipynb`): two random Gaussian directions,
each tensor rescaled with torch.norm(dim=0) (here translated to Flax layouts: see
vitjax.curvature.landscape), tensors with fewer than 2 dims and position embeddings left fixed,
a 21 x 21 grid on [-1, 1]^2, the model in eval mode on *augmented training* data (their training
crops and flips, Mixup/CutMix, label smoothing 0.1), and the plotted loss NLL + 0.05 * sum_k
|theta_k|_2 (weight norms not squared). The paper's claim: the ViT's landscape is flatter (its loss
rises less away from the trained weights) than the ResNet's. Differences, on purpose: the batches
are fixed (Park & Kim re-sample augmentation at every grid point, which adds noise to their
surfaces) and there are 4 batches of 64 rather than the whole training set. Use
`--set`-style flags to change any option, e.g. `--normalization filter` for Li et al.'s
per-output-unit normalisation, `--penalty l2` for the training-style (wd/2)|theta|^2 term.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.models = ("vit_scenes_patch8_64", "resnet_scenes_64")
    config.data = "vitjax_scenes/size64:train"
    config.dims = 2
    config.grid = 21
    config.span = 1.0
    config.normalization = "park_kim"
    config.weight_decay = 0.05
    config.penalty = "park_kim"
    config.num_batches = 4
    config.batch_size = 64
    config.augment = True
    config.seed = 0
    return config
