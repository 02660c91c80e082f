# mango_add_plugin(<target> <sources>...)
# Builds a Mango plugin: a MODULE library named <target>.so that exports only
# the entry symbol and links nothing but the SDK headers (never LibTorch).
function(mango_add_plugin target)
  add_library(${target} MODULE ${ARGN})
  if(TARGET MangoSDK::sdk)
    target_link_libraries(${target} PRIVATE MangoSDK::sdk)
  endif()
  get_property(languages GLOBAL PROPERTY ENABLED_LANGUAGES)
  if("CXX" IN_LIST languages)
    target_compile_features(${target} PRIVATE cxx_std_17)  # the C++ wrapper; C99 plugins need nothing
  endif()
  set_target_properties(${target} PROPERTIES
    PREFIX ""
    C_VISIBILITY_PRESET hidden
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  # clang's sanitizer runtimes live in the executable, so a sanitized plugin
  # has undefined symbols until it is loaded: no --no-undefined there.
  if(NOT APPLE AND NOT (MANGO_SANITIZE AND CMAKE_CXX_COMPILER_ID MATCHES "Clang"))
    target_link_options(${target} PRIVATE -Wl,--no-undefined -Wl,--as-needed)
  endif()
endfunction()

