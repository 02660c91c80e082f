# find_package(MangoSDK) — gives MangoSDK::sdk and mango_add_plugin().
include(${CMAKE_CURRENT_LIST_DIR}/MangoSDKTargets.cmake)
include(${CMAKE_CURRENT_LIST_DIR}/MangoPlugin.cmake)
