"""Install reptile-np: first-order meta-learning (Reptile, FOMAML) in NumPy + Numba."""
from setuptools import find_packages, setup

setup(
    name="reptile-np",
    version="0.1.0",
    description=(
        "Reptile and first-order MAML in NumPy with hand-written gradients "
        "and Numba convolutions"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["reptile_np", "reptile_np.*"]),
    install_requires=["numpy>=1.22", "numba>=0.57"],
    extras_require={
        "test": ["pytest>=7", "threadpoolctl>=3"],
        "torch": ["torch>=2.0"],
        "plot": ["matplotlib>=3.5"],
        "data": ["Pillow>=9.1"],
        "jax": ["jax>=0.4"],
        "dist": ["dask[distributed]>=2023.1"],
    },
    entry_points={"console_scripts": ["reptile-np=reptile_np.cli:main"]},
)
