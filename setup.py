"""vitjax: the analysis toolkit of five ViT papers, in JAX/Flax.

The top-level `kernels/` folder is installed as `vitjax.kernels`, so it can never clash with any
other distribution that ships a top-level package called `kernels`.
"""

from setuptools import find_packages, setup

TORCH = "torch==2.13.0"  # the local CPU build; anything looser drags in CUDA wheels

setup(
    name="vitjax",
    version="0.1.0",
    description="Functional Flax Vision Transformers with explicit capture, and the analyses of "
    "five papers on how ViTs work",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["vitjax", "vitjax.*"]) + ["vitjax.kernels"],
    package_dir={"vitjax.kernels": "kernels"},
    # The embedded default models (weights, run config, training log), a few MB each.
    package_data={"vitjax": ["pretrained/*/*"]},
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8,<0.13",
        "numpy>=1.26",
        "safetensors>=0.8",
        "huggingface_hub>=1.0",
        "ml_collections>=1.1",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        # Datasets: tensorflow-datasets reads and builds them, TensorFlow decodes and resizes images
        # (tf.data is the input pipeline; the CPU build is the one to use beside JAX, on TPU too).
        "tensorflow-cpu>=2.21,<2.22",
        "tensorflow-datasets>=4.9.10,<4.10",
        "importlib_resources>=6",  # TFDS's etils.epath needs it but does not declare it
    ],
    extras_require={
        # Reading .pth/.bin pickles and OpenAI CLIP's TorchScript archives needs torch itself.
        "torch": [TORCH],
        # NVIDIA GPUs (Linux x86_64): CUDA jaxlib and the Triton kernels (kernels/triton_*.py).
        # jax-triton 0.3.1 is the last release for jax 0.10 (0.4 needs jax >= 0.11); it wants
        # triton >= 3.6, and 3.6.0 and 3.7.1 (torch 2.13's pin) both compile these kernels. Triton
        # emits PTX ISA 8.7, which jaxlib assembles with nvidia-cuda-nvcc's ptxas: >= 12.8 (jax
        # alone accepts 12.6, whose ptxas would hand the PTX to the driver instead).
        "gpu": ["jax[cuda12]>=0.10.2,<0.11", "triton>=3.6,<3.8", "jax-triton==0.3.1", "nvidia-cuda-nvcc-cu12>=12.8"],
        # The PyTorch originals used as oracles. timm and open_clip_torch are installed separately
        # with --no-deps (see README): their torchvision requirement has no CPU build here.
        "test": [
            TORCH,
            "transformers==5.23.0",
            "triton==3.6.0",  # the Triton kernels run under TRITON_INTERPRET=1 on the CPU
            "jax-triton==0.3.1",
            "pyhessian==0.1",  # the curvature oracle; needs only numpy and torch (pinned above)
            "scikit-learn==1.9.1",  # the k-means and clustering-score oracle
            "pytest>=8",
            "pytest-xdist>=3.6",
            "pyyaml",
            "pillow",
            "ftfy",
            "regex",
        ],
    },
    entry_points={"console_scripts": ["vitjax=vitjax.cli:main"]},
)
