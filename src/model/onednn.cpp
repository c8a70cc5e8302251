// libtorch's oneDNN dense layer with a pre-packed weight (`mkldnn::_reorder_linear_weight`,
// `mkldnn::_linear_pointwise`), for Rust. The two operators are registered by libtorch_cpu in the
// `mkldnn` namespace, outside ATen's generated API, so tch has no binding for them; they are
// called here through the dispatcher, boxed, which costs microseconds against a product's
// milliseconds. Failures cross as src/shim/shim.h says.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>
#include <ATen/core/stack.h>

#include <optional>
#include <string>

#include "../shim/shim.h"

namespace {

std::optional<c10::OperatorHandle> find(const char* name) {
  return c10::Dispatcher::singleton().findOp(c10::OperatorName(name, ""));
}

// Looked up once: libtorch_cpu registers its operators when it is loaded, before any call here.
const std::optional<c10::OperatorHandle>& reorder_op() {
  static const auto op = find("mkldnn::_reorder_linear_weight");
  return op;
}

const std::optional<c10::OperatorHandle>& linear_op() {
  static const auto op = find("mkldnn::_linear_pointwise");
  return op;
}

at::Tensor call(const std::optional<c10::OperatorHandle>& op, torch::jit::Stack stack) {
  TORCH_CHECK(op.has_value(), "this libtorch has no oneDNN linear operators");
  op->callBoxed(&stack);
  return stack.at(0).toTensor();
}

}  // namespace

extern "C" {

// 1 when this libtorch registers both operators (x86 builds with oneDNN do), else 0.
int bertd_onednn_available() {
  return reorder_op().has_value() && linear_op().has_value();
}

// `weight` [out, in] reordered into oneDNN's blocked layout for products of about `rows` rows.
at::Tensor* bertd_onednn_pack(const at::Tensor* weight, int64_t rows, char** error) {
  return bertd::guarded(error, [&] {
    torch::jit::Stack stack;
    stack.emplace_back(*weight);
    stack.emplace_back(rows);
    return call(reorder_op(), std::move(stack));
  });
}

// activation(input · packedᵀ + bias); `attr` is "none", "gelu" or "relu", `algorithm` "none"
// (erf) or "tanh" for "gelu" and "" otherwise.
at::Tensor* bertd_onednn_linear(const at::Tensor* input, const at::Tensor* packed,
                                const at::Tensor* bias, const char* attr,
                                const char* algorithm, char** error) {
  return bertd::guarded(error, [&] {
    torch::jit::Stack stack;
    stack.emplace_back(*input);
    stack.emplace_back(*packed);
    stack.emplace_back(*bias);
    stack.emplace_back(std::string(attr));
    stack.emplace_back(c10::List<std::optional<at::Scalar>>());
    stack.emplace_back(std::string(algorithm));
    return call(linear_op(), std::move(stack));
  });
}

}  // extern "C"
