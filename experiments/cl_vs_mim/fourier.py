"""What Do Self-Supervised ViTs Learn? (Park et al., ICLR'23) Fig. 5: relative log amplitude of
Fourier-transformed representations along the residual stream (the high-frequency value per
sub-block), contrastive against masked image modelling.

    vitjax analyze --config experiments/cl_vs_mim/fourier.py --out runs/clmim_fourier

Models and data: as experiments/cl_vs_mim/attention_distance.py. Protocol (`representation_analysis.ipynb`,
the same as Park & Kim's): [embedding, after attention, after MLP] x 12 with no final norm, class
token dropped, log(|fft2| + 1e-6) averaged over images and channels, fftshift, the half-diagonal
minus DC; the last element is the high-frequency value (the paper plots every other entry).
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.models = ["mocov3_vit_base:/checkpoints/vit-b-300ep.pth.tar", "vit_base_patch16_224.mae"]
    config.data = "imagenette/160px:validation"
    config.analyses = ["fourier"]
    config.num_images = 64
    config.batch_size = 64
    return config
