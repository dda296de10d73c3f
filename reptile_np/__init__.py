"""reptile-np: Reptile and first-order MAML in NumPy, gradients by hand, convolutions by Numba."""
__version__ = "0.1.0"
