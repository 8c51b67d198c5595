// placeholder (exec/cuda/README.md)
