# tests/conformance/template_oot.cmake - builds plugins/template OUT OF TREE
# against an installed qplug include dir and runs the conformance suite on
# the result, as a third party would:
#
#   cmake -DBUILD_DIR=... -DSOURCE_DIR=... -DWORK_DIR=... -DDRIVER=...
#         -P template_oot.cmake
#
# 1. cmake --install the qplug build into WORK_DIR/prefix;
# 2. copy template.c and CMakeLists.standalone.txt (as CMakeLists.txt)
#    into WORK_DIR/src, configure it with only QPLUG_INCLUDE_DIR pointing
#    at the installed headers, and build it;
# 3. run the driver on the resulting template.so (every case it claims;
#    the driver fails if it claims none).
foreach(_v BUILD_DIR SOURCE_DIR WORK_DIR DRIVER)
  if(NOT DEFINED ${_v})
    message(FATAL_ERROR "template_oot.cmake: -D${_v}=... is required")
  endif()
endforeach()

file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR}/src)

function(_run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "failed (${_rc}): ${ARGN}\n${_out}")
  endif()
  message(STATUS "${_out}")
endfunction()

_run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix)
if(NOT EXISTS ${WORK_DIR}/prefix/include/qplug/plugin.h)
  message(FATAL_ERROR "the install put no qplug/plugin.h under ${WORK_DIR}/prefix/include")
endif()

set(_tpl ${SOURCE_DIR}/plugins/template)
if(NOT EXISTS ${_tpl}/CMakeLists.standalone.txt)
  message(FATAL_ERROR "${_tpl}/CMakeLists.standalone.txt is missing")
endif()
file(GLOB _tpl_sources ${_tpl}/*.c ${_tpl}/*.h)
file(COPY ${_tpl_sources} DESTINATION ${WORK_DIR}/src)
configure_file(${_tpl}/CMakeLists.standalone.txt ${WORK_DIR}/src/CMakeLists.txt COPYONLY)

_run(${CMAKE_COMMAND} -S ${WORK_DIR}/src -B ${WORK_DIR}/build
     -DQPLUG_INCLUDE_DIR=${WORK_DIR}/prefix/include)
_run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)

file(GLOB _so ${WORK_DIR}/build/*.so)
list(LENGTH _so _n)
if(NOT _n EQUAL 1)
  message(FATAL_ERROR "expected one plugin .so in ${WORK_DIR}/build, found: ${_so}")
endif()
_run(${DRIVER} --plugin ${_so})
