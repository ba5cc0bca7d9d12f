"""Teaching Matters (Walmer et al., CVPR'23) Fig. 5: aligned aggregated attention maps (AAAM) per
block and head, and the attention offset (centre of mass) derived from them.

    vitjax analyze --config experiments/teaching_matters/aaam.py --out runs/tm_aaam

Data and models: as experiments/teaching_matters/attention_distance.py (ImageNet-50 as a folder).
Protocol: class token dropped from queries and keys, rows renormalised (all-class rows stay 0),
each query's map pasted into a (2K-1)^2 canvas centred on it, summed over queries and images.
divisor='teaching_matters' divides as their code does (once per query per batch of 2 images), so
the values match their released numbers (about 2x the mean map); 'per_query' gives the exact mean.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.models = ["vit_base_patch16_224.dino", "vit_base_patch16_224.mae", "vit_base_patch16_clip_224.openai",
                     "beit_base_patch16_224.in22k_ft_in22k_in1k", "deit_base_patch16_224.fb_in1k"]
    config.data = "folder:/data/imagenet50"
    config.analyses = [dict(name="aaam", divisor="teaching_matters", batch_size=2)]
    config.batch_size = 32
    return config
