"""rzero-jax: R-Zero (self-evolving reasoning from zero data) in JAX."""
from setuptools import find_packages, setup

setup(
    name="rzero-jax",
    version="0.1.0",
    description="JAX/TPU-native reimplementation of R-Zero: a Challenger and a Solver co-evolve with GRPO.",
    packages=find_packages(include=["rzero_jax", "rzero_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.11",
        "optax",
        "orbax-checkpoint",
        "ml-collections",
        "absl-py",
        "sympy",
        "sentencepiece",
        # Tokenizers only at run time; transformers does not need torch for that.
        "transformers>=4.51",
        "safetensors",
        "numpy",
        # Answer equivalence: math-verify's LaTeX parser is far more complete than ours would be.
        "math-verify[antlr4_13_2]",
        "tqdm",
        "tensorboardX",
        "matplotlib",
    ],
    extras_require={
        # torch is only the reference that parity tests compare against. The exact pin takes the
        # local CPU wheel; an unpinned torch would pull several GB of CUDA.
        # accelerate: transformers needs it to load a GGUF file as the parity reference.
        "test": ["pytest", "torch==2.13.0", "nltk", "scipy", "gguf", "accelerate", "ruff"],
        "gguf": ["gguf"],
        "eval": ["champ-dataset", "pyarrow"],
        "tfds": ["tensorflow-datasets"],
        "tpu": ["jax[tpu]"],
        "gpu": ["jax[cuda12]"],
    },
)
