// placeholder: filled in by the CUDA backend work (exec/cuda/README.md)
