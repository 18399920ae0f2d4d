import Engine

// OpenBLAS picks its kernels when it loads: make sure it picked the fast ones for this
// CPU before anything else runs (re-executes once with OPENBLAS_CORETYPE set).
BLASEnvironment.ensureFastKernels()
BLAS.prepareWorkers()
Nb.main()
