# reference_tokenizer: token-for-token comparison with llama.cpp (node-llama-cpp) on a vocab-only
# GGUF built from tiktoken's cl100k_base ranks. Needs `npm ci` in tests/reference first.
if(EXISTS ${CMAKE_SOURCE_DIR}/tests/reference/node_modules AND TARGET latentserve)
  find_program(NODE_EXECUTABLE node)
  if(NODE_EXECUTABLE)
    add_test(NAME reference_tokenizer
             COMMAND ${NODE_EXECUTABLE} ${CMAKE_SOURCE_DIR}/tests/reference/tokenize_conformance.mjs
                     --latentserve $<TARGET_FILE:latentserve>
                     --work-dir ${CMAKE_CURRENT_BINARY_DIR}/reference_tokenizer)
    set_tests_properties(reference_tokenizer PROPERTIES LABELS reference TIMEOUT 900 COST 134)
  endif()
endif()
