# cmake -DNM=<nm> -DMODULE=<plugin.so> -P check_exports.cmake
# Fails unless MODULE's dynamic symbol table defines exactly
# qplug_plugin_entry (the linker's own _init, _fini, __bss_start, _edata
# and _end are ignored).
if(NOT NM OR NOT MODULE)
  message(FATAL_ERROR "usage: cmake -DNM=nm -DMODULE=plugin.so -P check_exports.cmake")
endif()
execute_process(COMMAND ${NM} -D --defined-only ${MODULE}
  OUTPUT_VARIABLE _out ERROR_VARIABLE _err RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "${MODULE}: nm failed: ${_err}")
endif()
string(REPLACE "\n" ";" _lines "${_out}")
set(_exports "")
foreach(_line ${_lines})
  # "<address> <type> <name>"; the name is the last field.
  string(REGEX MATCH "[^ \t]+$" _sym "${_line}")
  if(_sym STREQUAL "" OR _sym MATCHES "^(_init|_fini|__bss_start|_edata|_end)$")
    continue()
  endif()
  list(APPEND _exports ${_sym})
endforeach()
if(NOT _exports STREQUAL "qplug_plugin_entry")
  message(FATAL_ERROR "${MODULE}: exports [${_exports}], expected exactly qplug_plugin_entry")
endif()
message(STATUS "${MODULE}: exports only qplug_plugin_entry")
