// The host's version string, set by CMake from project(VERSION).
#pragma once
#ifndef MANGO_VERSION_STRING
#define MANGO_VERSION_STRING "0.0.0"
#endif
