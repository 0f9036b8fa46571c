# Synthesizes a tiny checkpoint in one format with `qplug synth` and loads
# it with `qplug load`, which must report zero unused tensors: a synthetic
# checkpoint is complete, and every tensor it holds is one the model reads.
# Arguments: -DQPLUG=path/to/qplug -DFORMAT=bf16|flash|flash-base|nvfp4 -DOUT=dir
file(REMOVE_RECURSE ${OUT})
execute_process(COMMAND ${QPLUG} synth --preset tiny --format ${FORMAT} --out ${OUT}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "qplug synth --format ${FORMAT} failed (${rc}): ${err}")
endif()
execute_process(COMMAND ${QPLUG} load --checkpoint ${OUT}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
file(REMOVE_RECURSE ${OUT})
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "qplug load of a synthesized ${FORMAT} checkpoint failed (${rc}): ${err}${out}")
endif()
if(NOT out MATCHES "unused tensors: 0([^0-9]|$)")
  message(FATAL_ERROR "qplug load left tensors of a synthesized ${FORMAT} checkpoint unused:\n${out}")
endif()
message(STATUS "${FORMAT}: ${out}")
