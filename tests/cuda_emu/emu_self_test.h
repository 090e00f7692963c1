// Checks of the emulator itself (emu_self_test.cpp).
#pragma once

#include <string>
#include <vector>

// Failures, if any, of the emulator's primitives and of the misuse checks it promises.
std::vector<std::string> run_emu_self_tests();
