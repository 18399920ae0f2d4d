#ifndef NB_COPENBLAS_SHIM_H
#define NB_COPENBLAS_SHIM_H
#include <cblas.h>
/* OpenBLAS extensions, declared in cblas.h of OpenBLAS builds:
   openblas_get_config, openblas_get_corename, openblas_get_num_threads. */

/* Exported by OpenBLAS's pthread thread server (its fork handler calls it): ends the worker
   threads; the next call that uses threads starts them again. */
int blas_thread_shutdown_(void);
#endif
