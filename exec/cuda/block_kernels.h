// Placeholder: kernels the device block sub-steps need beyond the other exec/cuda files.
#pragma once
