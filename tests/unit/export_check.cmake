# Export check (architecture.md): every plugin module exports exactly
# qplug_plugin_entry. One test per target of qplug_add_plugin; loader.cmake
# adds one that runs the check on a module exporting a second symbol and
# must fail, so a broken check cannot pass silently.
if(NOT CMAKE_NM)
  find_program(CMAKE_NM nm)
endif()
get_property(_qplug_export_plugins GLOBAL PROPERTY QPLUG_PLUGINS)
foreach(_p ${_qplug_export_plugins})
  add_test(NAME unit.exports.${_p}
    COMMAND ${CMAKE_COMMAND} -DNM=${CMAKE_NM} -DMODULE=$<TARGET_FILE:${_p}>
            -P ${PROJECT_SOURCE_DIR}/tests/tools/check_exports.cmake)
  set_tests_properties(unit.exports.${_p} PROPERTIES LABELS "unit;cpu")
endforeach()
