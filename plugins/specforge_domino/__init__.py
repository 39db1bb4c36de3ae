"""Domino causal corrector: PyTorch reference, fused Triton kernels, CUDA-graph rollout."""
