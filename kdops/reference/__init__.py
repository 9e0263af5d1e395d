"""Pure-PyTorch reference implementations: the oracle for the tests and the baseline for the benchmarks.

Each module has the loss written plainly with autograd (`<op>`) and the hand-written backward the
fused kernels implement (`<op>_backward`), so the closed-form gradient is itself checked against
autograd.
"""
