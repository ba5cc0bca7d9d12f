"""What Do Self-Supervised ViTs Learn? (Park et al., ICLR'23) Fig. 2 (right): normalised mutual
information between queries and keys per block (NMI -> 0 is attention collapse), and the cosine
similarity of attention maps across queries and heads.

    vitjax analyze --config experiments/cl_vs_mim/nmi.py --out runs/clmim_nmi

Models and data: as experiments/cl_vs_mim/attention_distance.py. Protocol (their notebook, issue #5):
class token dropped, 1e-8 added, rows renormalised; uniform query prior p(q) = 1/N; NMI =
I(q; k) / sqrt(H(q) H(k)); mean over images, then heads.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.models = ["mocov3_vit_base:/checkpoints/vit-b-300ep.pth.tar", "vit_base_patch16_224.mae"]
    config.data = "imagenette/160px:validation"
    config.analyses = [dict(name="nmi", eps=1e-8), "attention_collapse"]
    config.num_images = 64
    config.batch_size = 64
    return config
