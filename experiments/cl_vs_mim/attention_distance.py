"""What Do Self-Supervised ViTs Learn? (Park et al., ICLR'23) Fig. 2 (left): attention distance in
pixels per block and head, contrastive (MoCo v3) against masked image modelling.

    vitjax analyze --config experiments/cl_vs_mim/attention_distance.py --data-dir ~/tensorflow_datasets \
        --out runs/clmim_attention_distance

Checkpoints: MoCo v3 ViT-B/16 300 epochs (vit-b-300ep.pth.tar, the moco-v3 release); the paper's MIM
model is SimMIM ViT-B/16, whose shared relative position bias vitjax does not register, so MAE
ViT-B/16 (Hugging Face cache) stands in for it. Data: Imagenette-160 val; the paper uses a 2^-6
per-class subsample (60 images, `vitjax.data.subsets.subsample`), here the first 64 images.
Protocol: class token dropped, 1e-32 added, rows renormalised; Euclidean distance in pixels
(patch size x grid distance); mean over queries, then images.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.models = ["mocov3_vit_base:/checkpoints/vit-b-300ep.pth.tar", "vit_base_patch16_224.mae"]
    config.data = "imagenette/160px:validation"
    config.analyses = [dict(name="attention_distance", units="pixels")]
    config.num_images = 64
    config.batch_size = 64
    return config
