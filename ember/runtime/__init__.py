"""ember's runtime: strided tensors on numpy storage, eager ops and autograd."""

from ember.runtime.tensor import Storage, Tensor

__all__ = ["Storage", "Tensor"]
