"""Model names -> architecture config, preprocessing recipe and checkpoint sources.

Names are timm's (`arch.tag`; the bare `arch` means its first listed tag) or the official
repositories' own names (`dino_vits16`, `dinov2_vits14_reg`, `mocov3_vit_base`, ...). A name fixes
the architecture *and* the numerics of the source it imitates, such as how position embeddings are
resampled at another image size; the checkpoint file may come in any layout listed for the family.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vitjax.models.posemb import Resample
from vitjax.models.resnet import ResNetConfig
from vitjax.models.vit import ViTConfig

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # Google / BEiT inputs scaled to [-1, 1]
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

# How the official PyTorch code resamples position embeddings (timm's default is the
# ViTConfig default: bicubic, antialias, size-based).
DINO_RESAMPLE = Resample("bicubic", antialias=False, offset=0.1)  # dino#8's +0.1 kludge
TORCH_BICUBIC = Resample("bicubic", antialias=False)  # MAE's and DeiT's interpolate_pos_embed
DINOV2_REG_RESAMPLE = Resample("bicubic", antialias=True)  # interpolate_offset=0, antialias


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """The eval transform: resize the shorter side, center-crop, scale to [0, 1], normalise."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop: int = 224
    crop_pct: float = 0.875  # resize shorter side to crop / crop_pct
    interpolation: str = "bicubic"

    @property
    def resize(self) -> int:
        return int(self.crop / self.crop_pct)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    config: Any  # ViTConfig, or ResNetConfig for the comparator
    preprocess: Preprocess
    layouts: tuple[str, ...]  # checkpoint layouts accepted for this name
    hub: tuple[str, str] | None = None  # (repo_id, filename) looked up in the Hugging Face cache
    source: str = ""  # where a user gets the checkpoint, for error messages
    verified: str = ""  # the PyTorch original the tests compare against
    bundled: str = ""  # folder under vitjax/pretrained/ holding weights shipped with the package


REGISTRY: dict[str, ModelSpec] = {}
DEFAULT_TAG: dict[str, str] = {}  # arch -> full name of its default tag


def register(spec: ModelSpec) -> None:
    REGISTRY[spec.name] = spec
    if "." in spec.name:
        DEFAULT_TAG.setdefault(spec.name.split(".")[0], spec.name)


def lookup(name: str) -> ModelSpec:
    """The spec for a full name, a bare timm arch (its default tag) or an official alias."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name in DEFAULT_TAG:
        return REGISTRY[DEFAULT_TAG[name]]
    import difflib

    close = difflib.get_close_matches(name, list(REGISTRY) + list(DEFAULT_TAG), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown model {name!r}{hint} (`vitjax models` lists them all)")


TIMM = ("timm",)
# Families that Hugging Face transformers also hosts (DINO as ViTModel, non-distilled DeiT as ViT).
TIMM_HF_VIT, TIMM_HF_DINOV2 = ("timm", "hf_vit"), ("timm", "hf_dinov2")
VIT_SIZES = {  # width, depth, heads, mlp_dim
    "tiny": (192, 12, 3, 768),
    "small": (384, 12, 6, 1536),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
    "huge": (1280, 32, 16, 5120),
}


def vit(size: str, patch: int, image: int = 224, **kw) -> ViTConfig:
    width, depth, heads, mlp_dim = VIT_SIZES[size]
    return ViTConfig(
        image_size=image, patch_size=patch, width=width, depth=depth, num_heads=heads, mlp_dim=mlp_dim, **kw
    )


def timm_hub(name: str) -> tuple[str, str]:
    return (f"timm/{name}", "model.safetensors")


def _register_all() -> None:
    sup = Preprocess(HALF, HALF, crop_pct=0.9)
    for size in ("tiny", "small", "base"):
        name = f"vit_{size}_patch16_224.augreg_in21k_ft_in1k"
        register(ModelSpec(name, "supervised ViT", vit(size, 16, num_classes=1000), sup, TIMM_HF_VIT,
                           timm_hub(name), verified="timm, transformers"))
    for size in ("tiny", "small", "base"):
        name = f"deit_{size}_patch16_224.fb_in1k"
        register(ModelSpec(name, "DeiT", vit(size, 16, num_classes=1000), Preprocess(), TIMM_HF_VIT, timm_hub(name),
                           verified="timm, transformers"))
    for size in ("tiny", "small", "base"):
        name = f"deit_{size}_distilled_patch16_224.fb_in1k"
        register(ModelSpec(name, "DeiT distilled", vit(size, 16, num_classes=1000, dist_token=True), Preprocess(),
                           TIMM_HF_VIT, timm_hub(name), verified="timm, transformers"))
    for size in ("small", "base", "large"):
        name = f"deit3_{size}_patch16_224.fb_in1k"
        cfg = vit(size, 16, num_classes=1000, layer_scale=True, pos_embed_prefix=False)
        register(ModelSpec(name, "DeiT-III", cfg, Preprocess(crop_pct=1.0), TIMM, timm_hub(name), verified="timm"))

    dino_files = {("small", 16): "deitsmall16", ("small", 8): "deitsmall8", ("base", 16): "vitbase16",
                  ("base", 8): "vitbase8"}
    for (size, patch), stem in dino_files.items():
        url = f"https://dl.fbaipublicfiles.com/dino/dino_{stem}_pretrain/dino_{stem}_pretrain.pth"
        name = f"vit_{size}_patch{patch}_224.dino"
        register(ModelSpec(name, "DINO", vit(size, patch), Preprocess(), TIMM_HF_VIT, timm_hub(name), url,
                           "timm, transformers"))
        alias = f"dino_vit{size[0]}{patch}"
        register(ModelSpec(alias, "DINO", vit(size, patch, posemb_resample=DINO_RESAMPLE), Preprocess(),
                           TIMM_HF_VIT, None, url, "timm, transformers"))

    for size in ("small", "base"):
        url = f"https://dl.fbaipublicfiles.com/moco-v3/vit-{size[0]}-300ep/vit-{size[0]}-300ep.pth.tar"
        # MoCo v3's ViT-S uses 12 heads, not timm's 6; its sin-cos pos_embed is read from the file.
        cfg = dataclasses.replace(vit(size, 16), num_heads=12)
        register(ModelSpec(f"mocov3_vit_{size}", "MoCo v3", cfg, Preprocess(), TIMM, None, url, "timm"))

    for size, patch in (("base", 16), ("large", 16), ("huge", 14)):
        name = f"vit_{size}_patch{patch}_224.mae"
        url = f"https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_{size}.pth"
        register(ModelSpec(name, "MAE", vit(size, patch), Preprocess(), TIMM, timm_hub(name), url, "timm"))
        register(ModelSpec(f"mae_vit_{size}_patch{patch}", "MAE", vit(size, patch, posemb_resample=TORCH_BICUBIC),
                           Preprocess(), TIMM, None, url, "timm"))
        ft = vit(size, patch, posemb_resample=TORCH_BICUBIC, num_classes=1000, final_norm=False, pool="avg",
                 fc_norm=True)
        register(ModelSpec(f"mae_vit_{size}_patch{patch}_finetuned", "MAE fine-tuned", ft, Preprocess(), TIMM,
                           None, url.replace("pretrain/mae_pretrain", "finetune/mae_finetuned"), "timm"))

    beit = dict(pos_embed=False, rel_pos_bias=True, qkv_bias="qv", layer_scale=True, final_norm=False,
                pool="avg", fc_norm=True, num_classes=1000)
    for size in ("base", "large"):
        name = f"beit_{size}_patch16_224.in22k_ft_in22k_in1k"
        register(ModelSpec(name, "BEiT", vit(size, 16, **beit), Preprocess(HALF, HALF, crop_pct=0.9),
                           ("timm", "hf_beit"), timm_hub(name), verified="timm, transformers"))

    clip = dict(norm_pre=True, patch_bias=False, norm_eps=1e-5, mlp="quick_gelu")
    clip_pp = Preprocess(CLIP_MEAN, CLIP_STD, crop_pct=1.0)
    clip_layouts = ("openai_clip", "openai_clip_visual", "timm_clip")
    for size, patch, proj, file in (("base", 16, 512, "ViT-B-16"), ("base", 32, 512, "ViT-B-32"),
                                    ("large", 14, 768, "ViT-L-14")):
        name = f"vit_{size}_patch{patch}_clip_224.openai"
        cfg = vit(size, patch, proj_dim=proj, **clip)
        source = f"OpenAI's {file}.pt (github.com/openai/CLIP) or timm/{name}"
        register(ModelSpec(name, "OpenAI CLIP", cfg, clip_pp, clip_layouts, timm_hub(name), source, "open_clip"))
        register(ModelSpec(f"openai_clip_{file.lower().replace('-', '_')}", "OpenAI CLIP", cfg, clip_pp,
                           clip_layouts, None, source, "open_clip"))
        # timm's own name for these weights with their native QuickGELU (its `.openai` name runs
        # them with exact GELU; vitjax's `.openai` follows OpenAI, as both names here do).
        quick = f"vit_{size}_patch{patch}_clip_quickgelu_224.openai"
        register(ModelSpec(quick, "OpenAI CLIP", cfg, clip_pp, clip_layouts, timm_hub(quick), source, "open_clip"))
    name = "vit_base_patch16_clip_224.laion2b"
    cfg = vit("base", 16, proj_dim=512, **dict(clip, mlp="gelu"))
    source = f"open_clip's ViT-B-16 laion2b_s34b_b88k (laion/CLIP-ViT-B-16-laion2B-s34B-b88K) or timm/{name}"
    register(ModelSpec(name, "OpenCLIP", cfg, clip_pp, clip_layouts, timm_hub(name), source, "open_clip"))

    dinov2 = dict(layer_scale=True)
    giant = dict(width=1536, depth=40, num_heads=24, mlp_dim=4096, mlp="swiglu")
    for short, size in (("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant")):
        def cfg(**kw):
            base = vit("large", 14, 518, **dinov2, **kw) if size == "giant" else vit(size, 14, 518, **dinov2, **kw)
            return dataclasses.replace(base, **giant) if size == "giant" else base
        url = f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vit{short}14/dinov2_vit{short}14"
        name = f"vit_{size}_patch14_dinov2.lvd142m"
        register(ModelSpec(name, "DINOv2", cfg(), Preprocess(), TIMM_HF_DINOV2, timm_hub(name), url + "_pretrain.pth",
                           "timm, transformers"))
        register(ModelSpec(f"dinov2_vit{short}14", "DINOv2", cfg(posemb_resample=DINO_RESAMPLE), Preprocess(),
                           TIMM_HF_DINOV2, None, url + "_pretrain.pth", "timm, transformers"))
        name = f"vit_{size}_patch14_reg4_dinov2.lvd142m"
        # timm folds pos_embed[:, 0] into cls_token for the register models (no_embed_class).
        register(ModelSpec(name, "DINOv2 + registers", cfg(num_registers=4, pos_embed_prefix=False), Preprocess(),
                           TIMM_HF_DINOV2, timm_hub(name), url + "_reg4_pretrain.pth", "timm, transformers"))
        register(ModelSpec(f"dinov2_vit{short}14_reg", "DINOv2 + registers",
                           cfg(num_registers=4, posemb_resample=DINOV2_REG_RESAMPLE), Preprocess(), TIMM_HF_DINOV2,
                           None, url + "_reg4_pretrain.pth", "timm, transformers"))

    selfpatch = vit("small", 16, class_token=False, pool="avg", final_norm=False, posemb_resample=DINO_RESAMPLE)
    register(ModelSpec("selfpatch_vits16", "SelfPatch", selfpatch, Preprocess(), TIMM, None,
                       "the SelfPatch release (github.com/alinlab/SelfPatch)", "timm"))

    # The convolutional comparator: ResNet-50 in the torchvision layout, verified against timm's.
    resnet, tv_pp = ("torchvision_resnet",), Preprocess(interpolation="bilinear")
    tv_url = "https://download.pytorch.org/models/resnet50-0676ba61.pth (torchvision IMAGENET1K_V1)"
    register(ModelSpec("resnet50.a1_in1k", "ResNet-50", ResNetConfig(), Preprocess(crop_pct=0.95), resnet,
                       timm_hub("resnet50.a1_in1k"), verified="timm"))
    register(ModelSpec("resnet50.tv_in1k", "ResNet-50", ResNetConfig(), tv_pp, resnet, timm_hub("resnet50.tv_in1k"),
                       tv_url, "timm"))
    register(ModelSpec("torchvision_resnet50", "ResNet-50", ResNetConfig(), tv_pp, resnet, None, tv_url, "timm"))
    # Headless backbones: DINO's file has no fc; MoCo v3's fc is its projection MLP, which is dropped.
    register(ModelSpec("dino_resnet50", "DINO ResNet-50", ResNetConfig(num_classes=0), Preprocess(), resnet, None,
                       "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
                       "timm"))
    register(ModelSpec("mocov3_resnet50", "MoCo v3 ResNet-50", ResNetConfig(num_classes=0), tv_pp, resnet, None,
                       "https://dl.fbaipublicfiles.com/moco-v3/r-50-1000ep/r-50-1000ep.pth.tar", "timm"))

    _register_scenes_models()


def _register_scenes_models() -> None:
    """The embedded defaults: trained here on `vitjax_scenes/size64` by `vitjax train` (configs in
    experiments/scenes_*.py) and shipped in vitjax/pretrained/, so vitjax runs with no download."""
    scenes = Preprocess(crop=64, crop_pct=1.0)  # ImageNet mean/std, as in training; no resize at 64 px
    vit_config = ViTConfig(image_size=64, patch_size=8, width=96, depth=4, num_heads=3, mlp_dim=384,
                           num_classes=10)
    register(ModelSpec("vit_scenes_patch8_64", "embedded (vitjax_scenes)", vit_config, scenes, (), None,
                       "shipped with vitjax", "", bundled="vit_scenes_patch8_64"))
    resnet_config = ResNetConfig(image_size=64, layers=(2, 2, 2, 2), width=16, num_classes=10)
    register(ModelSpec("resnet_scenes_64", "embedded (vitjax_scenes)", resnet_config, scenes, (), None,
                       "shipped with vitjax", "", bundled="resnet_scenes_64"))


_register_all()
