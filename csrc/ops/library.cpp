/* The torch op library `reann`; each ops/*.cpp adds its ops to it (TORCH_LIBRARY_FRAGMENT). */

#include <torch/library.h>

TORCH_LIBRARY(reann, m) {}
