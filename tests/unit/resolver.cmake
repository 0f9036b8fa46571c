# `qplug plan --json` and `qplug load` on the tiny fixture checkpoints of
# tests/data/ckpt_headers: one CTest test per format and mode, checked by
# tests/data/ckpt_headers/check_plan.cmake (no Python at run time).
set(_ckpts ${PROJECT_SOURCE_DIR}/tests/data/ckpt_headers)
set(_layers_bf16 47)
set(_layers_flash 47)
set(_layers_flash_base 35)
set(_layers_nvfp4 35)
set(_layers_hf_stacked 47)
foreach(_fmt bf16 flash flash_base nvfp4 hf_stacked)
  foreach(_mode plan load)
    add_test(NAME cli.${_mode}.${_fmt}
      COMMAND ${CMAKE_COMMAND} -DQPLUG=$<TARGET_FILE:qplug> -DDIR=${_ckpts}/${_fmt}
              -DFORMAT=${_fmt} -DMODE=${_mode} -DLAYERS=${_layers_${_fmt}}
              -P ${_ckpts}/check_plan.cmake)
    set_tests_properties(cli.${_mode}.${_fmt} PROPERTIES LABELS "unit;cpu")
  endforeach()
endforeach()
add_test(NAME cli.plan.errors
  COMMAND ${CMAKE_COMMAND} -DQPLUG=$<TARGET_FILE:qplug> -DDIR=${_ckpts}/flash -DFORMAT=flash
          -DMODE=policy_error -DWORK=${CMAKE_CURRENT_BINARY_DIR} -P ${_ckpts}/check_plan.cmake)
set_tests_properties(cli.plan.errors PROPERTIES LABELS "unit;cpu")
