"""Vision Transformers Need Registers (Darcet et al., ICLR'24) Fig. 3 and 4: norms of the output
patch tokens per layer (a bimodal histogram for models with high-norm outliers), the outlier
threshold found per model, and the similarity of outliers' input patches with their neighbours.

    vitjax analyze --config experiments/registers/norms.py --data-dir ~/tensorflow_datasets --out runs/registers_norms

Models: DINOv2 ViT-L/14 without and with 4 registers (Hugging Face cache). The paper measured
DINOv2-g (cutoff 150, hand-picked); vitjax re-picks the cutoff per model from the histogram's dip
(`threshold=None`), as dinov2 #373/#475 show smaller models' outliers sit elsewhere. Norms are of
un-normalised block outputs (no final LayerNorm). Data: ImageNet val (any natural images work).
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.models = ["vit_large_patch14_dinov2.lvd142m", "vit_large_patch14_reg4_dinov2.lvd142m"]
    config.data = "imagenet2012:validation"
    config.analyses = [dict(name="token_norms", threshold=None), dict(name="outlier_redundancy", threshold=None),
                       "attention_received"]
    config.num_images = 1000
    config.batch_size = 16
    return config
