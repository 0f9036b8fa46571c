# The pre-quantized-activation bench (bench/bench_prequant.c, ABI 1.2):
# a standalone CUDA-build executable until `qplug bench` gets its hook
# (bench/ is being reworked by another change; its CMakeLists is not
# touched here). Built with the GPU targets by name:
#   cmake --build BUILD --target qplug_bench_prequant
if(QPLUG_CUDA AND TARGET qplug_common_cuda)
  add_executable(qplug_bench_prequant EXCLUDE_FROM_ALL
    ${PROJECT_SOURCE_DIR}/bench/bench_prequant.c)
  target_link_libraries(qplug_bench_prequant PRIVATE
    qplug_core qplug_common_cuda CUDA::cudart CUDA::cublasLt m)
  get_property(_pq_plugins GLOBAL PROPERTY QPLUG_PLUGINS)
  if(_pq_plugins)
    add_dependencies(qplug_bench_prequant ${_pq_plugins})
  endif()
endif()
