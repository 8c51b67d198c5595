// placeholder: device kernels of the MoE wire formats (exec/cuda/README.md)
