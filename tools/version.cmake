# Writes OUT, a header with the version and the git revision of SOURCE_DIR (`describe --dirty`),
# at every build; the file is rewritten only when its text changes, so nothing recompiles
# otherwise. Outside a git checkout (an image built from a source copy) the revision is
# LATENTSERVE_GIT_REVISION from the environment, else "unknown".
execute_process(COMMAND git -C "${SOURCE_DIR}" describe --always --dirty --abbrev=12
                OUTPUT_VARIABLE revision OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE rc)
if(NOT rc EQUAL 0 OR revision STREQUAL "")
  if(DEFINED ENV{LATENTSERVE_GIT_REVISION})
    set(revision "$ENV{LATENTSERVE_GIT_REVISION}")
  else()
    set(revision "unknown")
  endif()
endif()
set(text "#define LATENTSERVE_VERSION \"${VERSION}\"\n#define LATENTSERVE_GIT_REVISION \"${revision}\"\n")
set(old "")
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
endif()
if(NOT old STREQUAL text)
  file(WRITE "${OUT}" "${text}")
endif()
