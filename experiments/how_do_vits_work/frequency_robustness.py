"""Park & Kim, "How Do Vision Transformers Work?" (ICLR'22), Fig. 2b: robustness of a ViT and a
ResNet to noise of each frequency, plus the Fourier heat map of the error (Yin et al. 2019), on the
embedded default models and vitjax_scenes' test split.

    vitjax frequency --config experiments/how_do_vits_work/frequency_robustness.py --out runs/frequency_robustness

Band noise follows their `ops/adversarial.py::FreqAttack` (sign noise band-passed to a square
annulus of half-width 0.2 around each angular frequency, phase kept; the Fig. 2b script itself was
never released, issue #23). The paper's claim: ViTs lose less accuracy under high-frequency noise
than ResNets (multi-head self-attention acts as a low-pass filter). The amplitude 1.0 (model-input
units, about 0.23 of the [0, 1] pixel range) is ours: their `Random` attack's default 0.007 changes
no prediction of these models. The heat map samples every 4th frequency (a 16 x 16 grid at 64 px).
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.models = ("vit_scenes_patch8_64", "resnet_scenes_64")
    config.data = "vitjax_scenes/size64:test"
    config.num_batches = 4
    config.batch_size = 128
    config.bands = 11
    config.band_eps = 1.0
    config.half_width = 0.2
    config.heat_eps = 32.0
    config.heat_stride = 4
    config.seed = 0
    return config
