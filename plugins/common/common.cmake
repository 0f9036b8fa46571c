# plugins/common/common.cmake - the shared CPU helpers compiled into every
# plugin of this tree (as plain sources, so they take each plugin's hidden
# visibility and no symbol but qplug_plugin_entry leaves a .so).
#
# qplug__add_tree_plugin(NAME SOURCES...) builds plugins/NAME: it adds the
# common sources, the optional CUDA file NAME_cuda.cu when it exists, and
# -O3 for the CPU kernels (the default RelWithDebInfo -O2 leaves the dot
# products unvectorized).
set(QPLUG__COMMON_DIR ${CMAKE_CURRENT_LIST_DIR})
set(QPLUG__COMMON_SOURCES
  ${QPLUG__COMMON_DIR}/qp_weights.c
  ${QPLUG__COMMON_DIR}/qp_act.c
  ${QPLUG__COMMON_DIR}/qp_gemm.c
  ${QPLUG__COMMON_DIR}/qp_gemm_kernels.c
  ${QPLUG__COMMON_DIR}/qp_gemm_decode.c
  ${QPLUG__COMMON_DIR}/qp_plugin.c)

function(qplug__add_tree_plugin name)
  set(_cuda "")
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${name}_cuda.cu)
    set(_cuda ${CMAKE_CURRENT_SOURCE_DIR}/${name}_cuda.cu)
  endif()
  set(_libs "")
  if(QPLUG_CUDA AND _cuda)
    set(_libs qplug_common_cuda)
  endif()
  qplug_add_plugin(${name} SOURCES ${ARGN} ${QPLUG__COMMON_SOURCES} CUDA_SOURCES ${_cuda}
    LIBRARIES ${_libs})
  target_include_directories(${name} PRIVATE ${QPLUG__COMMON_DIR} ${CMAKE_CURRENT_SOURCE_DIR})
  target_compile_options(${name} PRIVATE $<$<COMPILE_LANGUAGE:C>:-O3>)
endfunction()
