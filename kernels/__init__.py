"""Experimental code, kept off the core's import path: nothing in `antimetric` imports it until asked.

triton_convs  the batched network's grouped convolutions as Triton kernels (CUDA; unmeasured on a GPU)
triton_fused  BatchNorm + ReLU + grouped convolution as one unit on fused Triton kernels (not wired in)
"""
