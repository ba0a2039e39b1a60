// Process-wide values made on first use without a function-local static's guard.
//
// A fork() taken while another thread is inside a static's initializer leaves the child that static's guard
// "in progress", with no thread to finish it: the child's first use of the static waits forever. A process that
// forks workers (a DataLoader) while another of its threads makes its first fastact call can hit that: 7 of 200
// children forked within 30-150 us of another thread's first call hung, in the guards of the streaming threshold
// (which reads sysfs) and the huge page size. The slots here are constant-initialized, so they have no guard,
// and are filled by compare-and-swap: threads that race each compute the value, and one result is kept.
#pragma once

#include <atomic>
#include <string>

#include <ATen/core/dispatch/Dispatcher.h>

namespace fastact {

// The value in `slot`, computed by `compute()` and stored there if the slot still holds `unset`.
template <typename T, typename Compute>
T load_or_compute(std::atomic<T>& slot, T unset, Compute&& compute) {
  T value = slot.load(std::memory_order_acquire);
  if (value != unset) return value;
  const T computed = compute();
  T expected = unset;
  return slot.compare_exchange_strong(expected, computed, std::memory_order_acq_rel) ? computed : expected;
}

// The dispatcher's handle of "fastact::<name><suffix>" (overload "" or "out"), looked up on first use. Declared
// `static OpSlot<Signature> op;` in the function that calls it. The handle is kept for the process, as the
// dispatcher keeps its operators.
template <typename Signature>
class OpSlot {
 public:
  using Handle = c10::TypedOperatorHandle<Signature>;
  constexpr OpSlot() = default;

  const Handle& get(const char* name, const char* suffix = "", const char* overload = "") {
    return *load_or_compute(handle_, static_cast<const Handle*>(nullptr), [&]() -> const Handle* {
      const std::string full = std::string("fastact::") + name + suffix;
      const auto handle = c10::Dispatcher::singleton().findSchemaOrThrow(full.c_str(), overload);
      return new Handle(handle.template typed<Signature>());
    });
  }

 private:
  std::atomic<const Handle*> handle_{nullptr};  // (a thread that loses the race leaks one handle, once)
};

}  // namespace fastact
