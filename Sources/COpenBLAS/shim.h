#ifndef NB_COPENBLAS_SHIM_H
#define NB_COPENBLAS_SHIM_H
#include <cblas.h>
/* OpenBLAS extensions, declared in cblas.h of OpenBLAS builds:
   openblas_get_config, openblas_get_corename, openblas_get_num_threads. */
#endif
