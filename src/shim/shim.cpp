// The one definition the shims share (src/shim/shim.h).
#include <cstdlib>

extern "C" void bertd_free_error(char* error) { std::free(error); }
