# CPU GEMM kernels (plugins/common/qp_gemm*.c): the micro-benchmark
# cpu_gemm_bench (a tool, not a test) and gemm_kernels_check, a test of
# the kernels against an fp64 product over awkward shapes. Both compile
# the shared plugin sources directly, as the plugins do.
include(${PROJECT_SOURCE_DIR}/plugins/common/common.cmake)

add_executable(cpu_gemm_bench ${PROJECT_SOURCE_DIR}/tests/tools/cpu_gemm_bench.c
  ${QPLUG__COMMON_SOURCES})
target_include_directories(cpu_gemm_bench PRIVATE ${QPLUG__COMMON_DIR})
target_link_libraries(cpu_gemm_bench PRIVATE qplug_core m)
target_compile_options(cpu_gemm_bench PRIVATE -O3)
