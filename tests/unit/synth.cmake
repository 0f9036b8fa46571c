# `qplug synth` end to end: one test per format that synthesizes the tiny
# preset and loads it with `qplug load`, expecting zero unused tensors.
foreach(_fmt bf16 flash flash-base nvfp4)
  add_test(NAME unit.synth_load.${_fmt}
    COMMAND ${CMAKE_COMMAND} -DQPLUG=$<TARGET_FILE:qplug> -DFORMAT=${_fmt}
            -DOUT=${CMAKE_CURRENT_BINARY_DIR}/synth_load_${_fmt}
            -P ${PROJECT_SOURCE_DIR}/tests/tools/synth_load.cmake)
  set_tests_properties(unit.synth_load.${_fmt} PROPERTIES LABELS "unit;cpu")
endforeach()
