"""Teaching Matters (Walmer et al., CVPR'23) Fig. 4: average attention distance per block and head,
on the unit square, for ViT-B/16 models trained with different supervision.

    vitjax analyze --config experiments/teaching_matters/attention_distance.py --out runs/tm_attention_distance

Data: Teaching Matters' ImageNet-50 (the first 100 files by name of 50 ImageNet train classes,
5,000 images), as a folder of class subfolders: `vitjax.data.subsets.imagenet50_files(train_dir)`
lists the files; link them into /data/imagenet50/<wnid>/ (or pass --data folder:YOUR_PATH).
Models: the timm names load from the Hugging Face cache; MoCo v3 needs its checkpoint file
(--model mocov3_vit_base:/path/vit-b-300ep.pth.tar). Each model gets its own mean/std at 224 px.
Protocol: class token dropped, rows renormalised with no epsilon (all-prefix rows count as 0),
token coordinates i/(K-1); per head the mean over queries, then over images. Multiply by
(K-1) x patch = 208 px to compare with pixel distances (which cl_vs_mim/attention_distance.py gives).
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.models = ["vit_base_patch16_224.dino", "vit_base_patch16_224.mae", "vit_base_patch16_clip_224.openai",
                     "beit_base_patch16_224.in22k_ft_in22k_in1k", "deit_base_patch16_224.fb_in1k"]
    config.data = "folder:/data/imagenet50"
    config.analyses = [dict(name="attention_distance", units="unit_square")]
    config.batch_size = 32
    return config
