// What bertd's C++ shims share: how a call reports failure to Rust. No C++ exception crosses
// into Rust: a call that makes a tensor returns it (`at::Tensor*`, owned by the caller, as
// torch-sys passes tensors) or null with a malloc'd message that Rust frees with
// `bertd_free_error` (src/shim/shim.cpp; src/shim/mod.rs is the Rust side).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace bertd {

// A malloc'd copy of `message`, or null when even that allocation failed.
inline char* copy_message(const char* message) {
  size_t length = std::strlen(message);
  char* copy = static_cast<char*>(std::malloc(length + 1));
  if (copy != nullptr) std::memcpy(copy, message, length + 1);
  return copy;
}

// Runs `body()`: true when it returned; false when it threw, with `*error` set to a malloc'd
// message of what (null when even that allocation failed).
template <typename F>
bool attempt(char** error, F body) {
  *error = nullptr;
  try {
    body();
    return true;
  } catch (const c10::Error& e) {
    // libtorch's message without the C++ backtrace that what() appends.
    *error = copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
  } catch (...) {
    *error = copy_message("unknown C++ exception");
  }
  return false;
}

// `body()` as a new tensor, or null with `*error` set as `attempt` does.
template <typename F>
at::Tensor* guarded(char** error, F body) {
  at::Tensor* result = nullptr;
  attempt(error, [&] { result = new at::Tensor(body()); });
  return result;
}

}  // namespace bertd
