// placeholder: the device MoE layer (exec/cuda/README.md)
