#ifndef NB_COPENBLAS_SHIM_H
#define NB_COPENBLAS_SHIM_H
#include <cblas.h>
/* OpenBLAS extensions, declared in cblas.h of OpenBLAS builds:
   openblas_get_config, openblas_get_corename, openblas_get_num_threads. */

/* Exported by OpenBLAS's pthread thread server (its fork handler calls it): ends the worker
   threads; the next call that uses threads starts them again. */
int blas_thread_shutdown_(void);

/* Exported by OpenBLAS: reads its OPENBLAS_* environment variables again (it reads them once
   when it loads); a thread count or timeout takes effect when the workers start next. */
void openblas_read_env(void);
#endif
