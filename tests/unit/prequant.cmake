# The pre-quantized-activation bench lives in `qplug bench --prequant`
# (bench/bench_prequant.c, part of qplug_bench). For comparing versions of
# the RMSNorm kernels in one device run, the same bench is also built as
# standalone executables around another build of norm_quant.cu (its objects
# come first on the link line, so the library's norm_quant object is not
# pulled in):
#   qplug_bench_prequant_vec1:  QPLUG_NQ_VEC=1 (8 elements per thread)
#   qplug_bench_prequant_vec4:  QPLUG_NQ_VEC=4 (32 elements per thread)
#   qplug_bench_prequant_pers:  both kernels persistent (resident blocks
#                               loop over rows, the next row loaded ahead)
#   qplug_bench_prequant_flat:  neither persistent (a block per row)
#   qplug_bench_prequant_hint:  QPLUG_NQ_L2_HINT=1 (L2::256B on the x loads)
#   qplug_bench_prequant_alt:   the file named by QPLUG_PREQUANT_ALT_NQ, when
#                               set (e.g. an older norm_quant.cu)
# None is built by default:
#   cmake --build BUILD --target qplug_bench_prequant_vec4
set(QPLUG_PREQUANT_ALT_NQ "" CACHE FILEPATH
  "Another norm_quant.cu to build qplug_bench_prequant_alt from (bench comparisons)")
if(QPLUG_CUDA AND TARGET qplug_common_cuda AND TARGET qplug_bench)
  set(_pq_variants vec1 vec4 pers flat hint)
  set(_pq_def_vec1 QPLUG_NQ_VEC=1)
  set(_pq_def_vec4 QPLUG_NQ_VEC=4)
  set(_pq_def_pers QPLUG_NQ_PERSIST_QUANT=1 QPLUG_NQ_PERSIST_BF16=1)
  set(_pq_def_flat QPLUG_NQ_PERSIST_QUANT=0 QPLUG_NQ_PERSIST_BF16=0)
  set(_pq_def_hint QPLUG_NQ_L2_HINT=1)
  set(_pq_def_alt "")
  if(QPLUG_PREQUANT_ALT_NQ)
    list(APPEND _pq_variants alt)
  endif()
  foreach(_v ${_pq_variants})
    if(_v STREQUAL "alt")
      set(_nq ${QPLUG_PREQUANT_ALT_NQ})
    else()
      set(_nq ${PROJECT_SOURCE_DIR}/plugins/common_cuda/norm_quant.cu)
    endif()
    add_executable(qplug_bench_prequant_${_v} EXCLUDE_FROM_ALL
      ${PROJECT_SOURCE_DIR}/bench/bench_prequant.c ${PROJECT_SOURCE_DIR}/bench/bench_abi.c ${_nq}
      ${PROJECT_SOURCE_DIR}/bench/bench_hold.cu ${PROJECT_SOURCE_DIR}/bench/bench_fill.cu)
    target_include_directories(qplug_bench_prequant_${_v} PRIVATE
      ${PROJECT_SOURCE_DIR}/bench ${PROJECT_SOURCE_DIR}/plugins/common_cuda)
    target_compile_definitions(qplug_bench_prequant_${_v} PRIVATE QPLUG_PREQUANT_MAIN
      ${_pq_def_${_v}})
    target_link_libraries(qplug_bench_prequant_${_v} PRIVATE
      qplug_core qplug_common_cuda CUDA::cudart CUDA::cublasLt m)
    get_property(_pq_plugins GLOBAL PROPERTY QPLUG_PLUGINS)
    if(_pq_plugins)
      add_dependencies(qplug_bench_prequant_${_v} ${_pq_plugins})
    endif()
    # The GPU test of the same variant (run by hand or by
    # bench/prequant_device.sh; the registered test covers the default).
    if(NOT _v STREQUAL "alt" AND TARGET fp8_block)
      add_executable(gpu_test_gpu_prequant_${_v} EXCLUDE_FROM_ALL
        ${PROJECT_SOURCE_DIR}/tests/gpu/test_gpu_prequant.c ${_nq}
        ${CMAKE_CURRENT_SOURCE_DIR}/testutil.c)
      target_include_directories(gpu_test_gpu_prequant_${_v} PRIVATE
        ${PROJECT_SOURCE_DIR}/tests/gpu ${CMAKE_CURRENT_SOURCE_DIR}
        ${PROJECT_SOURCE_DIR}/plugins/common_cuda)
      target_compile_definitions(gpu_test_gpu_prequant_${_v} PRIVATE ${_pq_def_${_v}}
        QPLUG_PREQUANT_PLUGIN_FP8_BLOCK="$<TARGET_FILE:fp8_block>")
      target_link_libraries(gpu_test_gpu_prequant_${_v} PRIVATE
        qplug_core qplug_common_cuda CUDA::cudart m)
      add_dependencies(gpu_test_gpu_prequant_${_v} fp8_block)
    endif()
  endforeach()
endif()
