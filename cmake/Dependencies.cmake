# Every dependency is a Debian package (see scripts/install-deps.sh).
find_package(PkgConfig REQUIRED)
find_package(yaml-cpp REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(Boost 1.74 REQUIRED COMPONENTS graph)
find_package(Eigen3 3.3 REQUIRED NO_MODULE)
find_package(CLI11 REQUIRED)
find_package(Catch2 2 REQUIRED)
find_package(Threads REQUIRED)

# MPI is optional: the executor's MPI world (exec/comm/mpi.*: `mpirun -np P tandem execute ...`)
# is built when an MPI is found, and TANDEM_HAVE_MPI says so (-DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON
# turns it off). Only MPI's C API is used (no deprecated C++ bindings).
set(MPI_CXX_SKIP_MPICXX ON)
find_package(MPI COMPONENTS CXX)
set(TANDEM_HAVE_MPI OFF)
if(MPI_CXX_FOUND)
  set(TANDEM_HAVE_MPI ON)
  message(STATUS "tandem: MPI world ON (MPI ${MPI_CXX_VERSION}, ${MPIEXEC_EXECUTABLE})")
  # How the MPI tests launch processes. Open MPI's mpiexec: --oversubscribe (several processes x
  # threads on a 2-core CI machine); it refuses to run as root unless told twice (CI containers
  # run as root); vader's single-copy mechanism (CMA) needs ptrace rights containers often lack,
  # so plain copy-in/copy-out is used. Under the sanitizers, LeakSanitizer would report Open MPI's
  # own allocations at exit, so leak detection is off for MPI tests.
  set(TANDEM_MPIEXEC_FLAGS "")
  set(TANDEM_MPI_TEST_ENV "")
  if(MPIEXEC_EXECUTABLE)
    execute_process(COMMAND ${MPIEXEC_EXECUTABLE} --version OUTPUT_VARIABLE tandem_mpiexec_version ERROR_QUIET)
    if(tandem_mpiexec_version MATCHES "Open MPI|OpenRTE")
      set(TANDEM_MPIEXEC_FLAGS --oversubscribe)
      set(TANDEM_MPI_TEST_ENV
        OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none)
    endif()
  endif()
  if(TANDEM_SANITIZE)
    list(APPEND TANDEM_MPI_TEST_ENV ASAN_OPTIONS=detect_leaks=0)
  endif()
else()
  message(STATUS "tandem: MPI world OFF (no MPI found)")
endif()

# SimGrid 3.32 in Debian ships pkg-config, not a CMake config.
if(TANDEM_SIM)
  pkg_check_modules(SIMGRID REQUIRED IMPORTED_TARGET simgrid>=3.32)
endif()

# CUDA is optional: built for Hopper (sm_90a) when nvcc is present and TANDEM_CUDA is ON.
set(TANDEM_HAVE_CUDA OFF)
if(TANDEM_CUDA)
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(TANDEM_HAVE_CUDA ON)
    message(STATUS "tandem: CUDA backend ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, sm_90a)")
  else()
    message(STATUS "tandem: CUDA backend OFF (no nvcc found)")
  endif()
else()
  message(STATUS "tandem: CUDA backend OFF (TANDEM_CUDA=OFF)")
endif()
