# The git revision the bd3 program reports in `bd3 --version`: read when CMake configures
# (a later commit shows after the next configure), "unknown" outside a git checkout or
# without git.
set(BD3_GIT_REVISION "unknown")
find_package(Git QUIET)
if(GIT_FOUND)
  execute_process(COMMAND ${GIT_EXECUTABLE} describe --always --dirty --tags
    WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}
    OUTPUT_VARIABLE bd3_git_describe OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE bd3_git_result ERROR_QUIET)
  if(bd3_git_result EQUAL 0 AND NOT bd3_git_describe STREQUAL "")
    set(BD3_GIT_REVISION "${bd3_git_describe}")
  endif()
endif()
