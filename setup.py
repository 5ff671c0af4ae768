"""Packaging for diffusers-spectrum.

Install (CPU, offline-friendly): ``pip install torch==2.13.0 -e ".[test]"``.
"""

from setuptools import find_packages, setup


setup(
    name="diffusers-spectrum",
    version="0.1.0",
    description="Spectrum Matching (ESM/DSM), DoG-REPA and spectral tools for latent diffusion, built on diffusers.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    include_package_data=True,
    package_data={"diffusers_spectrum": ["assets/*", "assets/**/*", "model_cards/*.md"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "diffusers>=0.32",
        "transformers>=4.45",
        "accelerate>=0.30",
        "datasets>=2.19",
        "huggingface-hub>=0.24",
        "safetensors>=0.4",
        "evaluate>=0.4",
        "numpy",
        "scipy",
        "ptwt>=1.0",  # differentiable wavelet transforms in PyTorch (wavelet_loss)
        "Pillow",
        "soundfile>=0.12",  # audio I/O (libsndfile wheels: WAV, FLAC, OGG, MP3); no ffmpeg needed
        "matplotlib",
        "tqdm",
        "tensorboard",
        "torchdata>=0.8",  # StatefulDataLoader: per-worker data positions for an exact resume
    ],
    extras_require={
        # setuptools >= 70.1 builds wheels itself: the non-editable install test builds with the test environment's
        "test": ["pytest", "scikit-image", "scikit-learn", "setuptools>=70.1"],
        "wandb": ["wandb"],
    },
    entry_points={"console_scripts": ["diffusers-spectrum=diffusers_spectrum.cli:main"]},
)
