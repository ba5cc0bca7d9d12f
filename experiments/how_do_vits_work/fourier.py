"""How Do Vision Transformers Work? (Park & Kim, ICLR'22) Fig. 2a and 9: relative log amplitude of
Fourier-transformed feature maps and feature-map variance along depth, ViT against ResNet-50:
multi-head self-attention lowers high frequencies and variance, convolutions raise them.

    vitjax analyze --config experiments/how_do_vits_work/fourier.py --data-dir ~/tensorflow_datasets \
        --out runs/park_kim_fourier

Models: DeiT-S (ViT) and ResNet-50 (timm, Hugging Face cache); the paper trained its own on
ImageNet. Protocol (`fourier_analysis.ipynb`, `featuremap_variance.ipynb`): the residual stream
[embedding, after attention, after MLP] with the attention and MLP branches separately; log
amplitude mean over images and channels, fftshift, half-diagonal minus DC; variance over (h, w),
mean over channels and images. The ResNet runs the block-output variants (taps tokens), which the
ViT runs too for a like-for-like curve. Data: ImageNet val, the first 512 images.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.models = ["deit_small_patch16_224.fb_in1k", "resnet50.a1_in1k"]
    config.data = "imagenet2012:validation"
    config.preset = "park_kim"
    config.num_images = 512
    config.batch_size = 32
    return config
