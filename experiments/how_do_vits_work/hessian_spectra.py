"""Park & Kim, "How Do Vision Transformers Work?" (ICLR'22), Fig. 1c / 4: Hessian max-eigenvalue
spectra of a ViT against a ResNet, on the embedded default models trained on vitjax_scenes.

    vitjax curvature --config experiments/how_do_vits_work/hessian_spectra.py --out runs/hessian_spectra

Their protocol (the code was never released; how-do-vits-work issue #12): for each mini-batch of
augmented training data (training crops and flips, Mixup/CutMix, label smoothing 0.1), the top-5
Hessian eigenvalues of NLL + weight decay by PyHessian's power iteration (largest |lambda|, at most
100 iterations, relative tol 1e-3, BatchNorm in eval mode), all batches pooled into one density.
The paper's claim: the ViT's spectrum sits at smaller magnitudes than the ResNet's and contains
negative eigenvalues (a non-convex landscape). Here: 16 batches of 64 per model (the paper uses the
whole training set; more batches only smooth the density), and the spectral density (SLQ, 10 probes
of 80 steps) and trace (Hutchinson to 2% standard error) of the Hessian over those 16 batches.
Weight decay 0.05 is the coefficient both models were trained with (AdamW's decoupled decay, so as
an L2 term it is a stated choice; it shifts every eigenvalue by +0.05).
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.models = ("vit_scenes_patch8_64", "resnet_scenes_64")
    config.data = "vitjax_scenes/size64:train"
    config.num_batches = 16
    config.batch_size = 64
    config.top_k = 5
    config.max_iter = 100
    config.tol = 1e-3
    config.weight_decay = 0.05
    config.mix = True
    config.density = True
    config.slq_probes = 10
    config.slq_steps = 80
    config.trace = True
    config.trace_rtol = 0.02
    config.trace_max_matvecs = 200
    return config
