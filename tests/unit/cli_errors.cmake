# The qplug command line on bad inputs: one CTest test per case of
# tests/tools/cli_errors.cmake (non-zero exit, one-line stderr naming the
# file or thing, nothing half-written left). No Python at run time.
foreach(_case usage unknown_command truncated_shard missing_shard lying_header missing_tensor
        bad_config bad_quant_config policy_unknown_key policy_missing_plugin token_out_of_range
        prompt_file_bad_token logits_missing_dir logits_onto_directory synth_existing_dir)
  add_test(NAME unit.cli_errors.${_case}
    COMMAND ${CMAKE_COMMAND} -DQPLUG=$<TARGET_FILE:qplug> -DCASE=${_case}
            -DWORK=${CMAKE_CURRENT_BINARY_DIR}/cli_errors_${_case} -DSRC=${PROJECT_SOURCE_DIR}
            -P ${PROJECT_SOURCE_DIR}/tests/tools/cli_errors.cmake)
  set_tests_properties(unit.cli_errors.${_case} PROPERTIES LABELS "unit;cpu")
endforeach()
