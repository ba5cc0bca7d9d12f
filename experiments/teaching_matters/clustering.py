"""Teaching Matters (Walmer et al., CVPR'23) Fig. 8: k-means of the class token and of the mean
patch token of every block (global semantics), scored against the labels (purity, NMI, ARI).

    vitjax analyze --config experiments/teaching_matters/clustering.py --out runs/tm_clustering

Data and models: as experiments/teaching_matters/attention_distance.py (ImageNet-50, 5,000 images,
as a folder; it has no masks, so the mask-pooled local-semantics features are off: run
`--data` on a dataset with masks and mask_pooled=True, k_mask=80, for their Fig. 9).
Protocol (`cka/cka_runner.py`): k=50, seed 0, 10 restarts; all 5,000 images kept in the buffer.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.models = ["vit_base_patch16_224.dino", "vit_base_patch16_224.mae", "vit_base_patch16_clip_224.openai"]
    config.data = "folder:/data/imagenet50"
    config.analyses = [dict(name="clustering", k=50, n_init=10, seed=0, capacity=5000, mask_pooled=False)]
    config.batch_size = 32
    return config
