# Loader tests: modules built from badplugins/badplugin.c, each breaking
# one ABI rule, in directories test_loader.c scans. They are not plugins of
# the project (no qplug_add_plugin): nothing installs them and the export
# check skips them.
set(QPLUG_BADPLUGIN_DIR ${CMAKE_BINARY_DIR}/tests/badplugins)

# qplug__badplugin(target subdir output-name definitions...)
function(qplug__badplugin target subdir outname)
  add_library(${target} MODULE ${CMAKE_CURRENT_LIST_DIR}/badplugins/badplugin.c)
  set_target_properties(${target} PROPERTIES
    PREFIX "" OUTPUT_NAME ${outname} C_VISIBILITY_PRESET hidden
    LIBRARY_OUTPUT_DIRECTORY ${QPLUG_BADPLUGIN_DIR}/${subdir})
  target_include_directories(${target} PRIVATE ${PROJECT_SOURCE_DIR}/core/include)
  target_compile_definitions(${target} PRIVATE ${ARGN})
  add_dependencies(test_loader ${target})
endfunction()

qplug__badplugin(bp_good good good_a)
qplug__badplugin(bp_dup_a dup dup_a "BP_NAME=\"dupname\"")
qplug__badplugin(bp_dup_b dup dup_b "BP_NAME=\"dupname\"")
qplug__badplugin(bp_abi2 single abi2 "BP_NAME=\"abi2\"" "BP_ABI=(2u<<16)")
qplug__badplugin(bp_noentry single noentry "BP_NAME=\"noentry\"" BP_NO_ENTRY)
qplug__badplugin(bp_nullentry single nullentry "BP_NAME=\"nullentry\"" BP_NULL_ENTRY)
qplug__badplugin(bp_small single small "BP_NAME=\"small\"" "BP_STRUCT_SIZE=16")
qplug__badplugin(bp_badname single badname "BP_NAME=\"Bad-Name\"")
qplug__badplugin(bp_nullslot single nullslot "BP_NAME=\"nullslot\"" BP_NULL_APPLY)
qplug__badplugin(bp_oldsize single oldsize "BP_NAME=\"oldsize\""
  "BP_STRUCT_SIZE=offsetof(qplug_plugin,kv_entry_bytes)")
qplug__badplugin(bp_leaky leaky leaky "BP_NAME=\"leaky\"" BP_LEAK_SYMBOL)

# test_loader's load_default case needs the real plugins in etc/plugins.d.
get_property(_qplug_plugins GLOBAL PROPERTY QPLUG_PLUGINS)
if(_qplug_plugins)
  add_dependencies(test_loader ${_qplug_plugins})
endif()
target_compile_definitions(test_loader PRIVATE QPLUG_BADPLUGIN_DIR="${QPLUG_BADPLUGIN_DIR}")

# One CTest test per case as well (the plain unit.test_loader runs them all).
foreach(_case file_errors abi2 noentry nullentry small badname nullslot oldsize dup junk default
        template)
  add_test(NAME unit.loader.${_case} COMMAND test_loader ${_case})
  set_tests_properties(unit.loader.${_case} PROPERTIES LABELS "unit;cpu")
endforeach()

# The export check's own test: a module with a second export must fail it.
if(NOT CMAKE_NM)
  find_program(CMAKE_NM nm)
endif()
add_test(NAME unit.exports.self_test_leaky
  COMMAND ${CMAKE_COMMAND} -DNM=${CMAKE_NM} -DMODULE=$<TARGET_FILE:bp_leaky>
          -P ${PROJECT_SOURCE_DIR}/tests/tools/check_exports.cmake)
set_tests_properties(unit.exports.self_test_leaky PROPERTIES LABELS "unit;cpu" WILL_FAIL TRUE)
