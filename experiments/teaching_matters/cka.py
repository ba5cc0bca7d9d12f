"""Teaching Matters (Walmer et al., CVPR'23) Fig. 3 and 6: CKA across depth within each model (on
the norm1/norm2 outputs of every block) and between the models (block outputs).

    vitjax analyze --config experiments/teaching_matters/cka.py --out runs/tm_cka

Data and models: as experiments/teaching_matters/attention_distance.py (ImageNet-50, 5,000 images,
as a folder). Protocol (`cka/cka_main.py`): minibatches of n=8 images (625 of them), X = the
flattened tokens x dim features, K = XX^T min-max scaled with its diagonal zeroed, unbiased HSIC,
HSIC_KL, HSIC_KK and HSIC_LL each averaged over minibatches before the ratio.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.models = ["vit_base_patch16_224.dino", "vit_base_patch16_224.mae", "vit_base_patch16_clip_224.openai"]
    config.data = "folder:/data/imagenet50"
    config.analyses = [dict(name="cka", taps=("norm1", "norm2"), estimator="teaching_matters", minibatch=8),
                       dict(name="cka_between", taps=("tokens",), estimator="teaching_matters", minibatch=8)]
    config.batch_size = 32
    return config
